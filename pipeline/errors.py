"""The job's errors, one family: each names what is wrong and carries the exit code the command line gives it."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The process's exit codes, for schedulers (README, "Exit codes"): written here and nowhere else."""

    OK = 0  # done (verify: all complete; --no-wait: submitted; a dry run: the run would be allowed)
    FAILED = 1  # the run or a partition failed (verify: a partition is incomplete)
    USAGE = 2  # bad usage or config, refused before anything is written
    LEASE_HELD = 3  # another live run holds the lease of a partition this run would write


class JobError(Exception):
    """Base of the job's own errors. The message names the file, column, setting or partition; exit_code is what
    the command line exits with when the error ends the run."""

    exit_code = ExitCode.FAILED


class ConfigError(JobError, ValueError):
    """An invalid configuration; the message names the file and the setting."""

    exit_code = ExitCode.USAGE


class OutputError(JobError, ValueError):
    """The output cannot be written or does not fit this run (an existing table with other columns); names it."""


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of an error that ended a run: the job's own errors carry theirs; anything else (the lower
    layers' InputError and BundleError, a runner's failure, SIGTERM) failed the run."""
    return error.exit_code if isinstance(error, JobError) else ExitCode.FAILED


def job_error_names() -> list[str]:
    """The class names of every error of the family (and of the lower layers' input and bundle errors), for
    finding the job's own message inside a runner's wrapped error text (a worker's exception reaches the launcher
    as text)."""
    names, todo = [], [JobError]
    while todo:
        cls = todo.pop()
        names.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(set(names) | {"InputError", "BundleError"})
