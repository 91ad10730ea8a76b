"""The log filter of a quiet run; also run by Python at the start of a local runner's SDK worker processes.

pipeline.cli.quiet puts this folder on the PYTHONPATH the workers inherit, so Python imports this file as
`sitecustomize` before the worker imports Beam. It imports nothing from the project: at that point the project's
folder is not on sys.path yet, and importing it early would pin the workers to another copy of it.
"""

import logging
import os
import re

# Log records every clean run gets from libraries, dropped unless -v. Real warnings are not on this list.
LOG_NOISE = (
    # Beam's gcp import (done by `import apache_beam`) when the [gcp] extra is not installed: every command.
    re.compile(r"apitools not found, and bigquery client libraries are not available"),
    # Beam's SDK worker (multi_processing) without a staged main session, which this job never uses.
    re.compile(r"No semi_persistent_directory found"),
)
# model.native_output.VERBOSE_ENV (a test keeps the two the same).
VERBOSE_ENV = "SENTIMENT_SCORE_VERBOSE"


class DropNoise(logging.Filter):
    """Drops the records in LOG_NOISE."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in LOG_NOISE)


class _UntilForwarded(logging.StreamHandler):
    """A stderr handler that stands aside once another handler is on the root logger."""

    def emit(self, record: logging.LogRecord) -> None:
        if len(logging.getLogger().handlers) > 1:
            return
        super().emit(record)


def is_sdk_worker() -> bool:
    """Whether this process is a Beam SDK worker a local runner started: Beam gives it the address of the runner's
    log service in its environment. Any other Python process that inherits the PYTHONPATH is left alone."""
    return "LOGGING_API_SERVICE_DESCRIPTOR" in os.environ and "CONTROL_API_SERVICE_DESCRIPTOR" in os.environ


def quiet_worker_logging() -> None:
    """In an SDK worker process, before Beam is imported: warnings to stderr minus LOG_NOISE until the worker's own
    log handler (which forwards every record to the runner, where the launcher shows its warnings) is attached.

    Without it, Beam's gcp warning at import makes logging add a stderr handler to the root logger, and the worker
    then prints every INFO record (channels, state cache, harness start and stop) to the job's stderr.
    """
    if os.environ.get(VERBOSE_ENV) or not is_sdk_worker():
        return
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _UntilForwarded()
    handler.setLevel(logging.WARNING)
    handler.addFilter(DropNoise())
    root.addHandler(handler)


if __name__ == "sitecustomize":
    quiet_worker_logging()
