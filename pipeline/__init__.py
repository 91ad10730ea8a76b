"""Batch-scoring job: the command line, a run, publishing, signals, and training (see the README's layout)."""
