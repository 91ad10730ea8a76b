"""`python -m pipeline` is the sentiment-score command."""

from pipeline.cli import run

run()
