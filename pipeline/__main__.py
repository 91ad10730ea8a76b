"""`python -m pipeline` is the sentiment-score command."""

from pipeline.cli.main import run

run()
