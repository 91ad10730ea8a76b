"""The sentiment-score command line: parses arguments and hands a typed config to the launcher."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys

from model.native_output import quiet_native_stderr
from model.runtime import AUTO, RUNTIMES
from pipeline.cli.quiet import configure_output
from pipeline.cli.version import VersionAction
from pipeline.errors import ConfigError, ExitCode
from pipeline.publish.publisher import FORMATS
from pipeline.run.config import load_config, validate_date

_LOG = logging.getLogger("sentiment-score")


# glibc gives threads that allocate at the same time malloc arenas of their own, up to 8 per core, and the memory
# Arrow, numpy and the model runtime's threads free stays spread over them. Two per process, for this process and
# the worker processes a local runner starts (they inherit the environment; the runtime image sets the same):
# measured at 1M reviews, multi_processing x2 1.76 -> 1.55 GB in all, in-memory 1.25 -> 1.20 GB, same speed.
MALLOC_ARENAS = "2"
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def limit_malloc_arenas() -> None:
    os.environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))
    except (OSError, AttributeError, ValueError):  # not glibc, or a value glibc would not take either
        pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"sentiment-score: error: {message}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


def _verbose(parser: argparse.ArgumentParser, default=None) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log at DEBUG level and show the libraries' own output (Beam, TensorFlow, LiteRT), which runs hide; "
        "before or after the command",
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config; flags override it (default: configs/local.yaml if present)"
    )
    parser.add_argument(
        "--customers", metavar="GLOB", help="customer Parquet: a file, folder or glob (default: the config's customers)"
    )
    parser.add_argument(
        "--reviews",
        metavar="GLOB",
        help="review Parquet: a file, folder or glob; with --date and in backfill, the root of its dt=YYYY-MM-DD/ "
        "folders (default: the config's reviews)",
    )
    parser.add_argument(
        "--model-dir",
        dest="model_dir",
        metavar="DIR",
        help="model bundle directory, or a models root whose CURRENT file names the version (default: the config's "
        "model_dir)",
    )
    parser.add_argument(
        "--output", metavar="DIR", help="output root, apart from every input (default: the config's output)"
    )
    _output_format(parser)
    parser.add_argument(
        "--allow-empty",
        dest="allow_empty",
        action="store_true",
        default=None,
        help="write an empty partition instead of failing when no review files match",
    )
    parser.add_argument(
        "--batch-size",
        dest="inference_batch_size",
        type=int,
        metavar="N",
        help="rows per model call (default 4096; litert always uses the bundle's 4096)",
    )
    parser.add_argument(
        "--runtime",
        choices=(AUTO, *RUNTIMES),
        help="the model runtime (default auto: litert, or tensorflow from the config's tensorflow_from_rows)",
    )
    parser.add_argument(
        "--max-reject-fraction",
        dest="max_reject_fraction",
        type=float,
        metavar="F",
        help="refuse to publish a partition with more than this fraction of rows rejected (default 0.1)",
    )
    parser.add_argument(
        "--take-over-lease",
        dest="take_over_lease",
        action="store_true",
        help="take the partitions' leases even if another run holds them (only when that run is known to be dead)",
    )
    parser.add_argument(
        "--no-wait",
        dest="no_wait",
        action="store_true",
        help="submit the pipeline and exit 0 without waiting; the job publishes by itself (check with verify)",
    )
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the plan (each day's input files and rows, scored / skipped / refused and why, the publisher, "
        "the chunks) and exit: 0 when the run would go ahead, 2 when it would be refused; writes nothing, takes no "
        "lease",
    )
    parser.add_argument(
        "--metrics-file",
        dest="metrics_file",
        metavar="F.prom",
        help="write the run's Prometheus metrics to this .prom file at its end, success or failure "
        "(node_exporter's textfile collector)",
    )
    parser.add_argument(
        "--pushgateway", metavar="URL", help="also push the run's metrics to this Prometheus Pushgateway URL"
    )
    parser.add_argument(
        "--lineage-file",
        dest="lineage_file",
        metavar="F",
        help="append the run's OpenLineage events to this file (JSON lines)",
    )
    parser.add_argument(
        "--lineage-parent",
        dest="lineage_parent",
        metavar="NS/JOB/RUN_ID",
        help="NAMESPACE/JOB/RUN_ID of the scheduler task run the lineage events hang under (Airflow's "
        "macros.OpenLineageProviderPlugin.lineage_parent_id)",
    )
    parser.add_argument(
        "--no-jit",
        dest="jit_compile",
        action="store_false",
        default=None,
        help="call the model without XLA compilation (tensorflow runtime only)",
    )
    _verbose(parser, argparse.SUPPRESS)


def _output_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-format",
        dest="output_format",
        choices=FORMATS,
        help="parquet: dt= folders with a _SUCCESS manifest each; iceberg: tables in the config's catalog (default: "
        "the config's output_format, else parquet)",
    )


_BEAM_EPILOG = (
    "Any other --flag goes to Beam's PipelineOptions (--runner, --direct_num_workers, --project, ...); a flag "
    "neither sentiment-score nor Beam knows, a value Beam refuses or an unknown runner is exit 2 before anything is "
    "written. Exit codes: 0 done, 1 a partition or the run failed, 2 bad usage or config, 3 another run holds a "
    "partition's lease."
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sentiment-score",
        description="Batch scoring of review sentiment on Apache Beam.",
        allow_abbrev=False,
        epilog="Exit codes: 0 done, 1 the run failed (or verify found an incomplete partition), 2 bad usage or "
        "config, 3 another run holds a partition's lease. "
        "Unknown --flags go to Beam's PipelineOptions (--runner, --direct_num_workers, ...).",
    )
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="print the job's version and the model bundle's (from the default config's model_dir) and exit",
    )
    _verbose(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    sample = sub.add_parser(
        "sample-data",
        help="write synthetic customers and day-partitioned reviews",
        description="Writes DIR/customers/*.parquet and DIR/reviews/dt=YYYY-MM-DD/*.parquet: synthetic customers "
        "and labelled reviews whose text carries sentiment, with a few dirty rows.",
        allow_abbrev=False,
    )
    sample.add_argument("--output", required=True, metavar="DIR", help="folder to write customers/ and reviews/ in")
    sample.add_argument("--reviews", type=int, default=3000, metavar="N", help="reviews in all (default 3000)")
    sample.add_argument("--days", type=int, default=3, metavar="D", help="days the reviews spread over (default 3)")
    sample.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    sample.add_argument(
        "--end-date",
        dest="end_date",
        default="2026-11-28",
        metavar="D",
        help="the last day, YYYY-MM-DD (default 2026-11-28)",
    )
    _verbose(sample, argparse.SUPPRESS)

    train = sub.add_parser(
        "train",
        help="fit the model on labelled rows and write a model bundle",
        description="Fits the two-input model on labelled reviews joined to their customers and writes a model "
        "bundle (model, vocabulary, scaler, metadata, LiteRT conversion) to DIR.",
        allow_abbrev=False,
    )
    train.add_argument("--customers", required=True, metavar="GLOB", help="customer Parquet: a file, folder or glob")
    train.add_argument(
        "--reviews",
        required=True,
        metavar="GLOB",
        help="labelled review Parquet (with a label column): a file, folder or glob",
    )
    train.add_argument("--model-dir", dest="model_dir", required=True, metavar="DIR", help="bundle directory to write")
    train.add_argument("--epochs", type=int, default=10, metavar="N", help="training epochs (default 10)")
    train.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    train.add_argument(
        "--validation-fraction",
        dest="validation_fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of rows held out for the validation metrics (default 0.2)",
    )
    _verbose(train, argparse.SUPPRESS)

    score = sub.add_parser(
        "score",
        help="score one run (one day with --date)",
        description="Scores one partition: ROOT/dt=D of --reviews into OUTPUT/dt=D with --date, else every review "
        "file into OUTPUT itself.",
        epilog=_BEAM_EPILOG,
        allow_abbrev=False,
    )
    _run_options(score)
    score.add_argument("--date", metavar="YYYY-MM-DD", help="score ROOT/dt=DATE of --reviews and write OUTPUT/dt=DATE")

    backfill = sub.add_parser(
        "backfill",
        help="score every day in a range, each day its own partition",
        description="Scores every day from --start to --end, in chunks of backfill_chunk_days days, each day "
        "published on its own; a day that fails does not stop the others.",
        epilog=_BEAM_EPILOG,
        allow_abbrev=False,
    )
    _run_options(backfill)
    backfill.add_argument("--start", required=True, metavar="YYYY-MM-DD", help="the first day to score")
    backfill.add_argument("--end", required=True, metavar="YYYY-MM-DD", help="the last day to score (inclusive)")
    backfill.add_argument(
        "--skip-existing",
        dest="skip_existing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip days already published, complete and scored by this run's model version (--no-skip-existing "
        "scores every day even where the config says skip_existing: true)",
    )

    verify = sub.add_parser(
        "verify",
        help="check published partitions (every one found when no date is given)",
        description="Checks published partitions: a Parquet partition against the manifest in its _SUCCESS, an "
        "Iceberg day against its snapshot. Without --date or --start/--end, every partition the output holds. "
        "Reads only, with the config's beam: filesystem options. Exit 0 all complete, 1 naming what is not, "
        "2 no such output or the other format.",
        epilog="Other --flags go to Beam's PipelineOptions for the filesystem (--s3_endpoint_url, --project, ...).",
        allow_abbrev=False,
    )
    verify.add_argument("--output", metavar="DIR", help="output root (default: the config's output)")
    verify.add_argument(
        "--config", metavar="FILE", help="YAML config whose output, output_format, catalog and beam options to use"
    )
    _output_format(verify)
    verify.add_argument("--date", metavar="YYYY-MM-DD", help="check OUTPUT/dt=DATE only")
    verify.add_argument("--start", metavar="YYYY-MM-DD", help="check every day from this date (with --end)")
    verify.add_argument("--end", metavar="YYYY-MM-DD", help="... to this one, inclusive")
    _verbose(verify, argparse.SUPPRESS)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    keys = (
        "customers",
        "reviews",
        "model_dir",
        "output",
        "allow_empty",
        "inference_batch_size",
        "runtime",
        "jit_compile",
        "skip_existing",
        "max_reject_fraction",
        "date",
        "output_format",
        "metrics_file",
        "pushgateway",
        "lineage_file",
        "lineage_parent",
    )
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM); raised where it was, so the run fails through its cleanup.

    A BaseException, like KeyboardInterrupt: the row isolation around model and featurizer calls catches Exception
    to turn a failing call into rejects, and a SIGTERM landing inside a model call was caught there as one failed
    call, retried by bisection, and the run carried on to publish (found by the SIGTERM test once runs got fast)."""


def _terminate(signum, frame):
    raise Terminated(f"stopped by signal {signum} (SIGTERM)")


def _verify_dates(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str] | None:
    """The days verify checks: --date, or --start..--end, or None for an unpartitioned output."""
    if args.date and (args.start or args.end):
        parser.error("verify takes --date or --start/--end, not both")
    if bool(args.start) != bool(args.end):
        parser.error("verify needs both --start and --end")
    if args.date:
        return [validate_date(args.date, "--date")]
    if args.start:
        from pipeline.run.plan import days_between
        from transforms.schema import InputError

        try:
            return days_between(validate_date(args.start, "--start"), validate_date(args.end, "--end"))
        except InputError as e:
            raise ConfigError(str(e)) from None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_flags = parser.parse_known_args(argv)
    limit_malloc_arenas()
    configure_output(args.verbose)
    if args.command in ("sample-data", "train") and beam_flags:
        parser.error(f"unrecognized arguments: {' '.join(beam_flags)}")
    try:
        if args.command == "sample-data":
            from pipeline.training.sample_data import write_sample_data

            result = write_sample_data(
                args.output, reviews=args.reviews, days=args.days, seed=args.seed, end_date=args.end_date
            )
            print(
                f"wrote {result['reviews']} reviews over {len(result['days'])} days and "
                f"{result['customers']} customers to {args.output}"
            )
            return ExitCode.OK
        if args.command == "train":
            # TensorFlow's C++ prints oneDNN and tf.data notices while it imports and fits: held back, noise dropped.
            with quiet_native_stderr():
                from pipeline.training.train import train_bundle

                bundle, metrics = train_bundle(
                    args.customers,
                    args.reviews,
                    args.model_dir,
                    epochs=args.epochs,
                    seed=args.seed,
                    validation_fraction=args.validation_fraction,
                )
            print(
                f"model bundle {args.model_dir} version {bundle.model_version}: "
                f"validation AUC {metrics['val_auc']:.4f}, accuracy {metrics['val_accuracy']:.4f}"
            )
            return ExitCode.OK
        from pipeline.run.launcher import run_backfill, run_score
        from pipeline.run.verify import run_verify

        # A scheduler's timeout sends SIGTERM: exit through the launcher's cleanup, which gives the partitions'
        # leases back, so the scheduler's retry can start at once instead of waiting for the lease to lapse.
        signal.signal(signal.SIGTERM, _terminate)

        if args.command == "verify":
            dates = _verify_dates(parser, args)
            if args.output is None and args.config is None:
                parser.error("verify needs --output or a --config that names the output")
            config = load_config(args.config, {k: getattr(args, k) for k in ("output", "output_format")})
            return run_verify(config, dates, beam_flags)
        lease_and_wait = {"take_over_lease": args.take_over_lease, "wait": not args.no_wait, "dry_run": args.dry_run}
        if args.command == "score":
            if args.date is not None:
                args.date = validate_date(args.date, "--date")
            return run_score(args.config, _overrides(args), beam_flags, **lease_and_wait)
        start, end = validate_date(args.start, "--start"), validate_date(args.end, "--end")
        return run_backfill(args.config, _overrides(args), beam_flags, start, end, **lease_and_wait)
    except ConfigError as e:
        dry_run = getattr(args, "dry_run", False)  # a dry run writes nothing, no metrics or lineage either
        if args.command in ("score", "backfill") and not dry_run and not getattr(e, "signalled", False):
            from pipeline.run.telemetry import signal_startup_failure

            signal_startup_failure(_overrides(args), args.command, f"config error: {e}", ExitCode.USAGE)
        print(f"sentiment-score: config error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except Terminated as e:  # the launcher has given the leases back already, and asked what was published
        print(f"sentiment-score: error: {e}; {getattr(e, 'published', 'nothing was published')}", file=sys.stderr)
        return ExitCode.FAILED


def run() -> None:
    """The process entry point (console script and python -m pipeline): main(), then exit without a last GC pass.

    At interpreter shutdown the collector walks TensorFlow's, Keras' and Beam's object graphs: 1.2-1.4 s per run,
    measured, against 0.14 s once they are frozen. Output files are closed by then and atexit handlers still run.
    """
    code = main()
    gc.disable()
    gc.freeze()
    sys.exit(code)
