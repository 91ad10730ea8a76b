"""Runs a scoring or backfill pipeline from a config: plan and check, build the graph, run it, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from model.bundle import BundleError
from pipeline.commit import SUMMARY_FILE
from pipeline.config import ConfigError, ScoreConfig, load_config
from pipeline.graph import build_pipeline
from pipeline.plan import OutputError, RunPlan, days_between, plan_run
from transforms.io import partition_path
from transforms.schema import InputError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_LOG = logging.getLogger("sentiment-score")


def _known_beam_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # Beam's own way of listing every option it knows.
    return parser


def pipeline_options(config: ScoreConfig, beam_flags: list[str]) -> PipelineOptions:
    """Beam options from the config's beam section then the command line; an unknown flag is a usage error."""
    flags = config.beam_flags() + list(beam_flags)
    _, unknown = _known_beam_flags().parse_known_args(flags)
    unknown = [u for u in unknown if u.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (not a sentiment-score or Beam pipeline option)")
    return PipelineOptions(flags)


def make_runner(options: PipelineOptions):
    """The runner to use: DirectRunner means Beam's FnApiRunner, which DirectRunner itself falls back to for a
    batch pipeline after trying Prism (a binary it would download); naming it directly keeps runs offline."""
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    if name in ("DirectRunner", "SwitchingDirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


def _fatal(message: str) -> int:
    print(f"sentiment-score: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _list(pattern: str) -> list[str]:
    try:
        return [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    except Exception:  # listing is best effort here: a failed cleanup must not fail a run
        return []


def _delete(paths: list[str]) -> None:
    if paths:
        try:
            FileSystems.delete(paths)
        except Exception as e:
            _LOG.warning("could not remove %d staging object(s): %s", len(paths), e)


def _clean_stale_staging(plan: RunPlan) -> None:
    """Removes what killed earlier runs left in staging for the partitions this run writes."""
    root = plan.staging_root.rstrip("/").rsplit("/", 1)[0]
    current = plan.staging_root.rstrip("/")
    if "://" in root:
        for partition in plan.partitions:
            leftovers = _list(FileSystems.join(partition_path(FileSystems.join(root, "*"), partition), "**"))
            _delete([p for p in leftovers if not p.startswith(current + "/")])
        return
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        run_dir = os.path.join(root, name)
        if run_dir == current or not os.path.isdir(run_dir):
            continue
        for partition in plan.partitions:
            shutil.rmtree(partition_path(run_dir, partition), ignore_errors=True)
        try:
            os.rmdir(run_dir)  # only once a killed run's staging is empty
        except OSError:
            pass


def _remove_staging(plan: RunPlan) -> None:
    """Removes this run's staging: after publishing (leftover retried shards) or after a failure."""
    if "://" in plan.staging_root:
        _delete(_list(FileSystems.join(plan.staging_root, "**")))
        return
    shutil.rmtree(plan.staging_root, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(plan.staging_root.rstrip("/")))
    except OSError:
        pass


def _cause(error: Exception) -> str:
    """The most useful line of a pipeline failure: our own error's message if a worker raised one."""
    message = " ".join(str(error).split())
    ours = re.findall(r"(?:InputError|InvariantError|BundleError|OutputError): (.+?)(?= \[while running|$)", message)
    if ours:
        return ours[-1][:600]
    return f"{type(error).__name__}: {message[-600:]}"


def _report_progress(result, stop: threading.Event, total: int, started: float, every: float = 30.0) -> None:
    """Logs rows scored so far from Beam's metrics while a non-blocking runner (Dataflow, portable) runs."""
    while not stop.wait(every):
        try:
            counters = result.metrics().query(MetricsFilter().with_name("rows_scored"))["counters"]
            scored = sum((c.committed or c.attempted or 0) for c in counters)
        except Exception:  # Not every runner reports metrics while running; progress is best effort.
            continue
        elapsed = time.time() - started
        _LOG.info(
            "progress: %d of %d rows scored (%.0f%%), %.0f rows/s",
            scored,
            total,
            100.0 * scored / max(total, 1),
            scored / max(elapsed, 1e-9),
        )


def _read_summary(plan: RunPlan, partition: str) -> dict | None:
    try:
        with FileSystems.open(FileSystems.join(partition_path(plan.output, partition), SUMMARY_FILE)) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


def execute(
    config: ScoreConfig,
    dates: list[str] | None,
    beam_flags: list[str],
    backfill: bool = False,
    test_pipeline: beam.Pipeline | None = None,
) -> int:
    """Plans, runs and reports one pipeline; returns the process exit code."""
    options = pipeline_options(config, beam_flags)
    # Start-up checks list and read files before the pipeline exists: give FileSystems the run's options
    # (credentials, endpoints, project) the way Beam gives them to its workers.
    FileSystems.set_options(options)
    try:
        plan = plan_run(config, dates, backfill)
    except (BundleError, InputError, OutputError) as e:
        return _fatal(str(e))
    for day, why in plan.skipped.items():
        _LOG.warning("skipping dt=%s: %s", day, why)
    if not plan.partitions:
        print(f"nothing to score: every day was skipped ({len(plan.skipped)})")
        return EXIT_OK
    _clean_stale_staging(plan)
    total = sum(plan.rows_by_partition.values())
    _LOG.info(
        "run %s: %d review rows in %d file(s), %d partition(s), model %s",
        plan.run_id,
        total,
        len(plan.review_files),
        len(plan.partitions),
        plan.model_version,
    )
    started = time.time()
    try:
        pipeline = test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
        build_pipeline(pipeline, config, plan)
        result = pipeline.run()
        stop = threading.Event()
        progress = threading.Thread(target=_report_progress, args=(result, stop, total, started), daemon=True)
        progress.start()
        try:
            state = result.wait_until_finish()
        finally:
            stop.set()
        if state not in (None, PipelineState.DONE):
            raise RuntimeError(f"pipeline ended in state {state}")
    except Exception as e:
        _remove_staging(plan)
        return _fatal(f"run {plan.run_id} failed: {_cause(e)}")
    wall = time.time() - started
    scored = rejected = 0
    for partition in plan.partitions:
        summary = _read_summary(plan, partition)
        if summary is None or summary.get("run_id") != plan.run_id:
            return _fatal(f"partition {partition_path(plan.output, partition)} was not published by this run")
        scored += summary["rows"]["scored"]
        rejected += summary["rows"]["rejected"]
        drift = summary.get("drift", {})
        flag = " DRIFT" if drift.get("drift_flagged") else ""
        print(
            f"{summary['output']}: read {summary['rows']['read']}, scored {summary['rows']['scored']}, "
            f"rejected {summary['rows']['rejected']} {summary['rejected_by_reason']}{flag}"
        )
    _remove_staging(plan)
    rate = total / wall if wall > 0 else 0.0
    print(
        f"done: {scored} scored + {rejected} rejected = {total} read in {wall:.1f}s ({rate:.0f} rows/s), "
        f"model {plan.model_version}, output {plan.output}"
    )
    return EXIT_OK


def run_score(config_path: str | None, overrides: dict, beam_flags: list[str]) -> int:
    config = load_config(config_path, overrides)
    return execute(config, [config.date] if config.date else None, beam_flags)


def run_backfill(config_path: str | None, overrides: dict, beam_flags: list[str], start: str, end: str) -> int:
    config = load_config(config_path, overrides)
    try:
        dates = days_between(start, end)
    except InputError as e:
        raise ConfigError(str(e)) from None
    return execute(config, dates, beam_flags, backfill=True)
