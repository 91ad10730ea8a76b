"""Quiet by default: each library's noise silenced where it starts, all of it shown again with -v/--verbose."""

from __future__ import annotations

import logging
import os

from model.native_output import VERBOSE_ENV
from pipeline.cli.worker_site.sitecustomize import DropNoise

# Libraries that log each stage, kernel and asset at INFO; their warnings stay visible.
CHATTY_LOGGERS = ("apache_beam", "absl", "tensorflow", "openlineage")
# The folder whose sitecustomize.py quiets a local runner's SDK worker processes before they import Beam.
WORKER_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")


def configure_output(verbose: bool) -> None:
    """Logging for the command line: the job's own INFO lines, library noise dropped unless verbose.

    Called before Beam or TensorFlow is imported: their environment variables are read at import, and Beam's gcp
    warning is logged during `import apache_beam`. Worker processes a local runner starts inherit the environment.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropNoise())
    path = os.environ.get("PYTHONPATH")
    if WORKER_SITE not in (path or "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [WORKER_SITE, path]))
