"""The sentiment-score command line: parses arguments and hands a typed config to the launcher."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from pipeline.config import ConfigError, validate_date

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_LOG = logging.getLogger("sentiment-score")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"sentiment-score: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: configs/local.yaml if present)")
    parser.add_argument("--customers", help="customer Parquet: a file, folder or glob")
    parser.add_argument("--reviews", help="review Parquet: a file, folder or glob; the dt=D root with --date")
    parser.add_argument("--model-dir", dest="model_dir", help="model bundle directory")
    parser.add_argument("--output", help="output root")
    parser.add_argument(
        "--allow-empty",
        dest="allow_empty",
        action="store_true",
        default=None,
        help="write an empty partition instead of failing when no review files match",
    )
    parser.add_argument("--batch-size", dest="inference_batch_size", type=int, help="rows per model call")
    parser.add_argument(
        "--no-jit",
        dest="jit_compile",
        action="store_false",
        default=None,
        help="call the model without XLA compilation",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sentiment-score",
        description="Batch scoring of review sentiment on Apache Beam.",
        allow_abbrev=False,
        epilog="Exit codes: 0 done, 1 the run failed, 2 bad usage or config. "
        "Unknown --flags go to Beam's PipelineOptions (--runner, --direct_num_workers, ...).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sample = sub.add_parser(
        "sample-data", help="write synthetic customers and day-partitioned reviews", allow_abbrev=False
    )
    sample.add_argument("--output", required=True)
    sample.add_argument("--reviews", type=int, default=3000)
    sample.add_argument("--days", type=int, default=3)
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--end-date", dest="end_date", default="2026-11-28")

    train = sub.add_parser("train", help="fit the model on labelled rows and write a model bundle", allow_abbrev=False)
    train.add_argument("--customers", required=True)
    train.add_argument("--reviews", required=True)
    train.add_argument("--model-dir", dest="model_dir", required=True)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--seed", type=int, default=7)
    train.add_argument("--validation-fraction", dest="validation_fraction", type=float, default=0.2)

    score = sub.add_parser("score", help="score one run (one day with --date)", allow_abbrev=False)
    _run_options(score)
    score.add_argument("--date", help="score ROOT/dt=DATE of --reviews and write OUTPUT/dt=DATE")

    backfill = sub.add_parser("backfill", help="score every day in a range in one pipeline", allow_abbrev=False)
    _run_options(backfill)
    backfill.add_argument("--start", required=True)
    backfill.add_argument("--end", required=True)
    backfill.add_argument(
        "--skip-existing",
        dest="skip_existing",
        action="store_true",
        default=None,
        help="skip days whose partition already has _SUCCESS",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    keys = (
        "customers",
        "reviews",
        "model_dir",
        "output",
        "allow_empty",
        "inference_batch_size",
        "jit_compile",
        "skip_existing",
        "date",
    )
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_flags = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # Beam and TensorFlow log every stage and kernel at INFO; a run's own progress lines stay visible.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        logging.getLogger("absl").setLevel(logging.WARNING)
    if args.command in ("sample-data", "train") and beam_flags:
        parser.error(f"unrecognized arguments: {' '.join(beam_flags)}")
    try:
        if args.command == "sample-data":
            from pipeline.sample_data import write_sample_data

            result = write_sample_data(
                args.output, reviews=args.reviews, days=args.days, seed=args.seed, end_date=args.end_date
            )
            print(
                f"wrote {result['reviews']} reviews over {len(result['days'])} days and "
                f"{result['customers']} customers to {args.output}"
            )
            return EXIT_OK
        if args.command == "train":
            from pipeline.train import train_bundle

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
            return EXIT_OK
        from pipeline.launcher import run_backfill, run_score

        if args.command == "score":
            if args.date is not None:
                validate_date(args.date, "--date")
            return run_score(args.config, _overrides(args), beam_flags)
        start, end = validate_date(args.start, "--start"), validate_date(args.end, "--end")
        return run_backfill(args.config, _overrides(args), beam_flags, start, end)
    except ConfigError as e:
        print(f"sentiment-score: config error: {e}", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    """The process entry point (console script and python -m pipeline): main(), then exit without a last GC pass.

    At interpreter shutdown the collector walks TensorFlow's, Keras' and Beam's object graphs: 1.2-1.4 s per run,
    measured, against 0.14 s once they are frozen. Output files are closed by then and atexit handlers still run.
    """
    code = main()
    gc.disable()
    gc.freeze()
    sys.exit(code)
