"""The job's errors: what the command line maps to exit codes."""


class ConfigError(ValueError):
    """An invalid configuration; the message names the file and the setting."""


class OutputError(ValueError):
    """The output cannot be written or does not fit this run (an existing table with other columns); names it."""
