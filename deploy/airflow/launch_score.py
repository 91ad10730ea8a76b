"""The Flex Template's launcher (deploy/flex-template/main.py runs it), usable on its own by anything that passes
Beam-style pipeline options (`--key=value`): pipeline options in, `sentiment-score score` out, run in-process."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# The repo checkout this file sits in (deploy/airflow/launch_score.py -> repo root). The job runs from here,
# as it does under cron, so relative paths in configs (and a relative --config) mean the same everywhere.
REPO_ROOT = Path(__file__).resolve().parents[2]

# Pipeline options that are the job's own flags, mapped to the CLI's spelling. A key matches with "-" and "_"
# treated alike (Airflow and Dataflow pass `--model_dir=...`). Every other argument is a Beam flag
# (--runner, --project, --region, --job_name, --labels, --setup_file, ...) and is passed through unchanged,
# after the job's flags; the CLI hands those to Beam and rejects (exit 2) a flag Beam does not know either.
JOB_FLAGS = {
    "config": "--config",
    "date": "--date",
    "output": "--output",
    "customers": "--customers",
    "reviews": "--reviews",
    "model_dir": "--model-dir",
}

# Beam's logger for the job submission message (apache_beam/runners/dataflow/internal/apiclient.py).
DATAFLOW_JOB_ID_LOGGER = "apache_beam.runners.dataflow.internal.apiclient"


class _JobFlags(argparse.ArgumentParser):
    """The job's own flags; parse_known_args leaves every other argument (Beam's flags) in order, untouched."""

    def error(self, message):  # argparse would print usage and exit; the caller reports a ValueError instead
        raise ValueError(message)


class _UnlessEmpty(argparse.Action):
    """Stores the value unless it is empty: `--key=` (a parameter or Airflow Variable left blank) means "not set"."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value:
            setattr(namespace, self.dest, value)


def _job_flags() -> _JobFlags:
    parser = _JobFlags(add_help=False, allow_abbrev=False)  # no prefix matching: `--out...` may be Beam's
    for key in JOB_FLAGS:
        names = dict.fromkeys([f"--{key}", f"--{key.replace('_', '-')}"])  # model_dir and model-dir alike
        parser.add_argument(*names, dest=key, action=_UnlessEmpty)
    return parser


def build_argv(argv: Sequence[str], default_config: str | None = None) -> list[str]:
    """Turn `--key=value` / `--key value` options into the argument list for `sentiment-score score`.

    A leading "score" is accepted and not repeated. An empty `--key=` (an optional parameter or Airflow Variable
    left blank) is dropped, job flag or Beam flag, so the config's value stands; a repeated job flag keeps its
    last value. `default_config` is used when no --config is given. Raises ValueError for a job flag without a
    value.
    """
    args = list(argv)
    if args[:1] == ["score"]:
        args = args[1:]
    try:
        job, beam = _job_flags().parse_known_args(args)
    except ValueError as exc:
        # argparse's words ("argument --date: expected one argument") as the launcher has always said it.
        flag = re.match(r"argument (--[\w-]+)", str(exc))
        raise ValueError(f"{flag.group(1) if flag else exc} needs a value") from None
    job = {k: v for k, v in vars(job).items() if v is not None}
    if "config" not in job and default_config:
        job["config"] = default_config
    argv_out = ["score"]
    for key, flag in JOB_FLAGS.items():
        if key in job:
            argv_out += [flag, job[key]]
    return argv_out + [a for a in beam if not (a.startswith("--") and a.endswith("=") and a.count("=") == 1)]


def _cli_main():
    """Import the job's CLI lazily: prefer the installed package, else the checkout this file is in."""
    try:
        from pipeline.cli.main import main
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        from pipeline.cli.main import main
    return main


def main(argv: Sequence[str] | None = None, default_config: str | None = None) -> int:
    """Run `sentiment-score score` in-process with the mapped arguments and return its exit code."""
    try:
        cli_argv = build_argv(sys.argv[1:] if argv is None else argv, default_config=default_config)
    except ValueError as exc:
        print(f"launch_score: {exc}", file=sys.stderr)
        return 2
    # Beam's INFO line "Created job with id: [...]" names the Dataflow job in the launcher's log (the DAG task's, the
    # Flex Template launcher's), where an operator looks for the job to follow or cancel it. The CLI turns the
    # "apache_beam" loggers down to WARNING unless -v; a level set on this one logger keeps that single line. The
    # CLI's own logging.basicConfig prints it to stderr.
    logging.getLogger(DATAFLOW_JOB_ID_LOGGER).setLevel(logging.INFO)
    os.chdir(REPO_ROOT)
    print("launch_score: sentiment-score " + " ".join(cli_argv), file=sys.stderr, flush=True)
    result = _cli_main()(cli_argv)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
