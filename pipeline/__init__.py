"""Batch-scoring job: CLI, config, start-up checks, graph builder, partition commit and run report."""
