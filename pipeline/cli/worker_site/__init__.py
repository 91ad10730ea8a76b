"""Holds the sitecustomize.py that quiets a local runner's SDK worker processes (see pipeline.cli.quiet)."""
