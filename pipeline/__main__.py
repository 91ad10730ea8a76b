"""`python -m pipeline` is the sentiment-score command."""

import sys

from pipeline.cli import main

sys.exit(main())
