"""Whether a day's review input has landed (its _SUCCESS or a first Parquet file): a scheduler's sensor runs it.

`python -m pipeline.cli.input_ready --config FILE --date D` exits 0 when ROOT/dt=D holds `_SUCCESS` or a `*.parquet`
file, 1 while it holds neither (the sensor checks again later), 2 when the config does not load.
"""

from __future__ import annotations

import argparse
import sys

# The sensor's own answers: ready, or not yet (Airflow pokes again); a usage error is the job's exit 2.
EXIT_READY, EXIT_WAITING = 0, 1
MARKER = "_SUCCESS"


def input_present(reviews_root: str, date: str) -> str | None:
    """The first of ROOT/dt=D/_SUCCESS or ROOT/dt=D/*.parquet that exists, or None."""
    from pipeline import storage
    from transforms.io import partition_path

    folder = partition_path(reviews_root, date)
    for pattern in (storage.join(folder, MARKER), storage.join(folder, "*.parquet")):
        found = storage.list_paths(pattern)  # a folder that does not exist yet matches nothing
        if found:
            return sorted(found)[0]
    return None


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli.quiet import configure_output
    from pipeline.errors import ConfigError, ExitCode
    from pipeline.run.config import load_config, validate_date

    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.input_ready", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="the run's YAML config: its reviews root is checked, read with its beam: filesystem options"
    )
    parser.add_argument("--reviews", help="the reviews root, instead of the config's")
    parser.add_argument("--date", required=True, help="the day YYYY-MM-DD whose dt= folder is checked")
    args = parser.parse_args(argv)
    configure_output(verbose=False)
    from apache_beam.io.filesystems import FileSystems  # after configure_output: Beam logs at import

    from pipeline.run.options import pipeline_options
    from transforms.io import partition_path

    try:
        date = validate_date(args.date, "--date")
        config = load_config(args.config)
        root = args.reviews or config.reviews
        # The same credentials and endpoints (s3_endpoint_url, project, ...) the job reads its input with.
        FileSystems.set_options(pipeline_options(config, []))
    except ConfigError as e:
        print(f"input_ready: config error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    found = input_present(root, date)
    if found is None:
        print(f"waiting: no {MARKER} or *.parquet in {partition_path(root.rstrip('/'), date)} yet")
        return EXIT_WAITING
    print(f"ready: {found}")
    return EXIT_READY


if __name__ == "__main__":
    sys.exit(main())
