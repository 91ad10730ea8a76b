"""Runs a scoring or backfill pipeline from a config: plan and check, build the graph, run it, report."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from model.bundle import BundleError
from pipeline.errors import ConfigError, ExitCode, OutputError, exit_code_for
from pipeline.publish import lease
from pipeline.publish.results import PartitionResult, remove_staging
from pipeline.run import leases, outcome
from pipeline.run.config import ScoreConfig, load_config
from pipeline.run.dry_run import run_dry
from pipeline.run.graph import build_pipeline
from pipeline.run.options import make_runner, pipeline_options
from pipeline.run.plan import RunPlan, days_between, plan_run
from pipeline.run.progress import BackfillProgress, chunks, report_progress
from pipeline.run.skipped import log_skipped, skipped_summary
from pipeline.run.staging import clean_dead_staging
from pipeline.run.telemetry import RunSignals
from transforms.beam_compat import runner_job_id
from transforms.schema import InputError

_LOG = logging.getLogger("sentiment-score")


def _cancel(result, stopped: BaseException) -> None:
    """Cancels the job a stopped launcher was waiting on, so the launcher's cleanup (leases given back, staging
    removed) cannot race a job that goes on to publish. A released lease fences the job out as well: its commit
    step finds the lease no longer held and publishes nothing. When the cancel fails, the job may still run, so the
    leases and staging are left to it (marked on the exception for execute's cleanup)."""
    try:
        result.cancel()
        _LOG.warning("cancelled the job after %s", type(stopped).__name__)
    except Exception as e:
        stopped.job_left_running = f"could not cancel the job ({type(e).__name__}: {e})"


@dataclasses.dataclass(frozen=True)
class Launch:
    """What one run's launch carries from start-up to its report, built once in _execute: the config, the plan (its
    leases taken), Beam's options, a test's pipeline (None: a new one per chunk), whether it is a backfill, whether
    the launcher waits for the job, and the run's signals. A chunk's launch is this one with its own plan."""

    config: ScoreConfig
    plan: RunPlan
    options: PipelineOptions
    test_pipeline: beam.Pipeline | None
    backfill: bool
    wait: bool
    signals: RunSignals


def _run_pipeline(launch: Launch) -> tuple[list[PartitionResult], str | None]:
    """Runs one pipeline over the launch plan's partitions; returns (per-partition results, job id when not
    waiting)."""
    config, plan, options, wait = launch.config, launch.plan, launch.options, launch.wait
    total = sum(plan.rows_by_partition[p] for p in plan.partitions)
    started = time.time()
    stop = threading.Event()
    try:
        pipeline = launch.test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
        build_pipeline(pipeline, config, plan)
        # Renewal starts before run(): a local runner's run() returns only once the job is done.
        threading.Thread(target=leases.keep_renewed, args=(plan, stop), daemon=True, name="RenewLeases").start()
        try:
            result = pipeline.run()
            if not wait:  # Dataflow's result has job_id(); the portable runner's keeps the Job API's id
                job_id = runner_job_id(result)
                return [], job_id or "(the runner gave no job id)"
            progress = threading.Thread(target=report_progress, args=(result, stop, total, started), daemon=True)
            progress.start()
            try:
                state = result.wait_until_finish()
            except BaseException as stopped:  # SIGTERM or Ctrl-C while a runner runs the job
                _cancel(result, stopped)
                raise
        finally:
            stop.set()
        if state not in (None, PipelineState.DONE):
            raise RuntimeError(f"pipeline ended in state {state}")
    except Exception as e:
        remove_staging(plan.staging_root)
        leases.release(plan, plan.partitions)
        why = f"run {plan.run_id} failed: {outcome.cause(e)}"
        return [PartitionResult.failed(p, why) for p in plan.partitions], None
    summary = outcome.read_run_summary(plan)
    if summary is None or summary.get("run_id") != plan.run_id:  # the pipeline could not write it: ask the outputs
        return [outcome.outcome_from_manifest(plan, p) for p in plan.partitions], None
    return [PartitionResult.from_dict(p) for p in summary["partitions"]], None


def execute(
    config: ScoreConfig,
    dates: list[str] | None,
    beam_flags: list[str],
    backfill: bool = False,
    test_pipeline: beam.Pipeline | None = None,
    take_over_lease: bool = False,
    wait: bool = True,
) -> int:
    """Plans, takes the partitions' leases, runs and reports; returns the process exit code.

    A backfill runs one pipeline per chunk of backfill_chunk_days days, each published before the next starts;
    a day that fails is reported and the others are published. With wait=False the pipeline is submitted as one
    job and publishes by itself; `sentiment-score verify` tells when it is done.
    """
    # --- run signals (pipeline/run/telemetry.py): metrics file and lineage events at the end of every run ---
    signals = RunSignals(config, "backfill" if backfill else "score", dates)
    code = ExitCode.FAILED
    try:
        code = _execute(config, dates, beam_flags, backfill, test_pipeline, take_over_lease, wait, signals)
        return code
    except ConfigError as e:
        code = exit_code_for(e)
        signals.fail(f"config error: {e}")
        e.signalled = True  # the CLI reports it; the signals are written already
        raise
    except BaseException as e:  # SIGTERM, Ctrl-C or a bug: the run failed, and says so
        signals.fail(f"{type(e).__name__}: {e}")
        raise
    finally:
        signals.end(code)


def _execute(
    config: ScoreConfig,
    dates: list[str] | None,
    beam_flags: list[str],
    backfill: bool,
    test_pipeline: beam.Pipeline | None,
    take_over_lease: bool,
    wait: bool,
    signals: RunSignals,
) -> int:
    options = pipeline_options(config, beam_flags)
    # Start-up checks list and read files before the pipeline exists: give FileSystems the run's options
    # (credentials, endpoints, project) the way Beam gives them to its workers.
    FileSystems.set_options(options)
    try:
        plan = plan_run(config, dates, backfill, run_id=signals.run_id)
    except (BundleError, InputError, OutputError) as e:
        signals.fail(str(e))
        return outcome.fatal(str(e))
    signals.start(plan)  # run signals: START
    log_skipped(plan, dates or [])
    for day, why in plan.failed.items():
        _LOG.error("not scoring dt=%s: %s", day, why)
    if not plan.partitions:
        remove_staging(plan.staging_root)  # the start-up probe made it
        if plan.failed:
            return outcome.report(plan, [], time.time(), signals)
        print(f"nothing to score: {skipped_summary(plan, dates or [])}")
        return ExitCode.OK

    try:
        taken = leases.take(plan, take_over_lease)
    except lease.LeaseHeld as e:
        remove_staging(plan.staging_root)
        signals.fail(str(e))
        print(f"sentiment-score: error: {e}", file=sys.stderr)
        return ExitCode.LEASE_HELD
    except lease.LeaseError as e:
        remove_staging(plan.staging_root)
        signals.fail(str(e))
        return outcome.fatal(str(e))
    plan = dataclasses.replace(plan, leases=taken)
    try:
        return _launch(Launch(config, plan, options, test_pipeline, backfill, wait, signals))
    except BaseException as stopped:  # SIGTERM (a scheduler's timeout) or Ctrl-C: give the partitions back
        left = getattr(stopped, "job_left_running", None)
        if left:  # the job may still publish: its leases and staging are its own
            print(f"sentiment-score: error: {left}; its leases and staging are left to it", file=sys.stderr)
            stopped.published = "the job may still publish: check with `sentiment-score verify`"
            raise
        leases.release(plan, plan.partitions)
        remove_staging(plan.staging_root)
        stopped.published = outcome.published_when_stopped(plan)
        raise


def _launch(launch: Launch) -> int:
    """With the partitions' leases held: clean dead staging, then submit, or run chunk by chunk and report."""
    plan = launch.plan
    clean_dead_staging(plan, plan.partitions)

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
    if not launch.wait:
        _, job = _run_pipeline(launch)
        print(
            f"submitted: run {plan.run_id}, job {job}, model {plan.model_version}; it publishes "
            + ", ".join(plan.publisher.name(p) for p in plan.partitions)
            + "; check with `sentiment-score verify`"
        )
        return ExitCode.OK

    return _run_chunks(launch, started)


def _run_chunks(launch: Launch, started: float) -> int:
    """Runs the plan's partitions chunk by chunk (one chunk unless backfilling), then reports and returns the code."""
    plan, backfill = launch.plan, launch.backfill
    size = launch.config.backfill_chunk_days if backfill else max(len(plan.partitions), 1)
    results: list[PartitionResult] = []
    all_chunks = chunks(plan.partitions, size)
    progress = BackfillProgress(all_chunks, plan.rows_by_partition) if backfill else None
    for i, chunk in enumerate(all_chunks):
        if i:
            try:
                leases.renew(plan, chunk)
            except (lease.LeaseHeld, lease.LeaseError) as e:
                results += [PartitionResult.failed(p, str(e)) for p in chunk]
                continue
        if progress:
            progress.starting(i)
        chunk_plan = dataclasses.replace(
            plan,
            partitions=chunk,
            rows_by_partition={p: plan.rows_by_partition[p] for p in chunk},
            files_by_partition={p: plan.files_by_partition[p] for p in chunk},
            review_files=[f for f in plan.review_files if f.partition in chunk],
        )
        chunk_launch = dataclasses.replace(
            launch, plan=chunk_plan, test_pipeline=launch.test_pipeline if i == 0 else None
        )
        chunk_results, _ = _run_pipeline(chunk_launch)
        for result in chunk_results:
            outcome.print_result(plan, result)
        results += chunk_results
        if progress:
            progress.finished(i)
    remove_staging(plan.staging_root)
    return outcome.report(plan, results, started, launch.signals)


def run_score(
    config_path: str | None,
    overrides: dict,
    beam_flags: list[str],
    take_over_lease: bool = False,
    wait: bool = True,
    dry_run: bool = False,
) -> int:
    config = load_config(config_path, overrides)
    dates = [config.date] if config.date else None
    if dry_run:
        return run_dry(config, dates, beam_flags)
    return execute(config, dates, beam_flags, take_over_lease=take_over_lease, wait=wait)


def run_backfill(
    config_path: str | None,
    overrides: dict,
    beam_flags: list[str],
    start: str,
    end: str,
    take_over_lease: bool = False,
    wait: bool = True,
    dry_run: bool = False,
) -> int:
    config = load_config(config_path, overrides)
    if config.date is not None:
        raise ConfigError(
            f"setting 'date' ({config.date}, from {config_path or 'the default config'}) is for score: a backfill "
            f"scores --start {start} .. --end {end} only; remove date: from the config, or run score --date"
        )
    try:
        dates = days_between(start, end)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if dry_run:
        return run_dry(config, dates, beam_flags, backfill=True)
    return execute(config, dates, beam_flags, backfill=True, take_over_lease=take_over_lease, wait=wait)
