"""Runs a scoring or backfill pipeline from a config: plan and check, build the graph, run it, report."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from model.bundle import BundleError
from pipeline.errors import ConfigError, ExitCode, OutputError, exit_code_for, job_error_names
from pipeline.publish import lease
from pipeline.publish.commit import control_root, remove_staging, run_summary_path, write_run_summary
from pipeline.run.config import ScoreConfig, load_config
from pipeline.run.dry_run import run_dry
from pipeline.run.graph import build_pipeline
from pipeline.run.options import make_runner, pipeline_options
from pipeline.run.plan import RunPlan, days_between, plan_run
from pipeline.run.progress import BackfillProgress, chunks
from pipeline.run.skipped import log_skipped, skipped_summary
from pipeline.run.telemetry import RunSignals
from pipeline.storage import basename, delete_tree, is_remote, join, list_paths, read_json
from transforms.beam_compat import runner_job_id
from transforms.schema import InputError

_LOG = logging.getLogger("sentiment-score")


def _fatal(message: str) -> int:
    print(f"sentiment-score: error: {message}", file=sys.stderr)
    return ExitCode.FAILED


def _clean_dead_staging(plan: RunPlan, partitions: list[str]) -> None:
    """Removes other runs' staging of the partitions this run holds the lease of: no live run can be writing it.

    Each run stages a partition in its own folder (Publisher.staging_dir), so the cleanup names exactly those
    folders, on every filesystem; a partition whose lease this run does not hold is never touched, so a live run's
    staging is never deleted.
    """
    control = control_root(plan.staging_root)
    current = basename(plan.staging_root)
    staging_dir = plan.publisher.staging_dir
    for partition in partitions:
        folder = basename(staging_dir(control, partition))
        runs = set()
        for path in list_paths(join(staging_dir(join(control, "*"), partition), "**")):
            parts = path[len(control) :].lstrip("/").split("/")
            if len(parts) > 2 and parts[1] == folder and parts[0] != current and not parts[0].startswith("_"):
                runs.add(parts[0])
        for run in sorted(runs):
            try:
                delete_tree(staging_dir(join(control, run), partition))
            except Exception as e:  # tidiness: the next run that holds the lease tries again
                _LOG.warning("could not remove run %s's staging of %s: %s", run, partition or "the output", e)
            if not is_remote(control):
                try:
                    os.rmdir(join(control, run))  # only once a dead run's staging is empty
                except OSError:
                    pass


def _release(plan: RunPlan, partitions: list[str], held: dict[str, dict[str, int]] | None = None) -> None:
    held = plan.leases if held is None else held
    for partition in partitions:
        try:
            lease.release_all(held.get(partition, {}), plan.run_id)
        except Exception as e:  # the lease then lapses at its expiry
            _LOG.warning("could not release the lease of %s: %s", plan.publisher.name(partition), e)


def _cause(error: Exception) -> str:
    """The most useful line of a pipeline failure: our own error's message if a worker raised one."""
    message = " ".join(str(error).split())
    names = "|".join(job_error_names())
    ours = re.findall(rf"(?:{names}): (.+?)(?= \[while running|$)", message)
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


def _renew(plan: RunPlan, partitions: list[str]) -> None:
    for partition in partitions:
        name = plan.publisher.name(partition)
        lease.renew_all(plan.leases.get(partition, {}), plan.run_id, plan.lease_expiry_seconds, name)


def _keep_leases(plan: RunPlan, stop: threading.Event) -> None:
    """Renews the running chunk's leases every quarter of their expiry from before the pipeline starts until it
    ends (a local runner's run() blocks until the job is done), so a healthy run never lapses however long it
    takes; the pipeline renews each partition itself before its commit too. A partition this run published or
    refused has given its leases back and is renewed no more."""
    renewing = list(plan.partitions)
    while renewing and not stop.wait(plan.lease_expiry_seconds / 4):
        for partition in list(renewing):
            try:
                _renew(plan, [partition])
            except (lease.LeaseHeld, lease.LeaseError) as e:  # the commit's fence refuses what was lost
                renewing.remove(partition)
                if not lease.released_by(plan.leases.get(partition, {}), plan.run_id):
                    _LOG.warning("could not renew a lease: %s", e)


def _read_run_summary(plan: RunPlan) -> dict | None:
    return read_json(run_summary_path(control_root(plan.staging_root), plan.run_id))


def _run_pipeline(
    config: ScoreConfig, plan: RunPlan, options: PipelineOptions, test_pipeline, wait: bool
) -> tuple[list[dict], str | None]:
    """Runs one pipeline over plan's partitions; returns (per-partition results, job id when not waiting)."""
    total = sum(plan.rows_by_partition[p] for p in plan.partitions)
    started = time.time()
    stop = threading.Event()
    try:
        pipeline = test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
        build_pipeline(pipeline, config, plan)
        # Renewal starts before run(): a local runner's run() returns only once the job is done.
        threading.Thread(target=_keep_leases, args=(plan, stop), daemon=True, name="RenewLeases").start()
        try:
            result = pipeline.run()
            if not wait:  # Dataflow's result has job_id(); the portable runner's keeps the Job API's id
                job_id = runner_job_id(result)
                return [], job_id or "(the runner gave no job id)"
            progress = threading.Thread(target=_report_progress, args=(result, stop, total, started), daemon=True)
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
        _release(plan, plan.partitions)
        why = f"run {plan.run_id} failed: {_cause(e)}"
        return [{"partition": p, "status": "failed", "message": why, "rows": {}} for p in plan.partitions], None
    summary = _read_run_summary(plan)
    if summary is None or summary.get("run_id") != plan.run_id:  # the pipeline could not write it: ask the outputs
        return [_outcome_from_manifest(plan, p) for p in plan.partitions], None
    return summary["partitions"], None


def _outcome_from_manifest(plan: RunPlan, partition: str) -> dict:
    """A partition's outcome when the run summary is missing: published if its manifest names this run."""
    check = plan.publisher.check(partition, count_rows=False)
    if check.complete and check.manifest["run_id"] == plan.run_id:
        return {"partition": partition, "status": "published", "message": "published", "rows": check.manifest["rows"]}
    why = f"run {plan.run_id} ended without its run summary and did not publish this partition"
    return {"partition": partition, "status": "failed", "message": why, "rows": {}}


def _print_result(plan: RunPlan, result: dict) -> None:
    name = plan.publisher.name(result["partition"])
    if result["status"] != "published":
        if len(plan.partitions) > 1:  # a single partition's failure is the run's final line
            print(f"sentiment-score: error: {name}: not published: {result['message']}", file=sys.stderr)
        return
    published = plan.publisher.published_summary(result["partition"]) or {}
    rows = result["rows"]
    flag = " DRIFT" if published.get("drift", {}).get("drift_flagged") else ""
    print(
        f"{name}: read {rows['read']}, scored {rows['scored']}, rejected {rows['rejected']} "
        f"{published.get('rejected_by_reason', {})}{flag}"
    )


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
        return _fatal(str(e))
    signals.start(plan)  # run signals: START
    log_skipped(plan, dates or [])
    for day, why in plan.failed.items():
        _LOG.error("not scoring dt=%s: %s", day, why)
    if not plan.partitions:
        remove_staging(plan.staging_root)  # the start-up probe made it
        if plan.failed:
            return _report(plan, [], time.time(), signals)
        print(f"nothing to score: {skipped_summary(plan, dates or [])}")
        return ExitCode.OK

    # Each partition's leases are those of what its publisher publishes (a table's day, a folder's real path),
    # so runs that reach it through different outputs exclude each other.
    taken: dict[str, dict[str, int]] = {}
    try:
        for partition in plan.partitions:
            taken[partition] = lease.acquire_all(
                plan.publisher.lease_scopes(partition),
                plan.run_id,
                plan.started_at,
                plan.lease_expiry_seconds,
                take_over_lease,
            )
    except lease.LeaseHeld as e:
        _release(plan, list(taken), taken)
        remove_staging(plan.staging_root)
        signals.fail(str(e))
        print(f"sentiment-score: error: {e}", file=sys.stderr)
        return ExitCode.LEASE_HELD
    except lease.LeaseError as e:
        _release(plan, list(taken), taken)
        remove_staging(plan.staging_root)
        signals.fail(str(e))
        return _fatal(str(e))
    except BaseException:  # SIGTERM or Ctrl-C while taking them
        _release(plan, list(taken), taken)
        raise
    plan = dataclasses.replace(plan, leases=taken)
    try:
        return _launch(config, plan, options, test_pipeline, backfill, wait, signals)
    except BaseException as stopped:  # SIGTERM (a scheduler's timeout) or Ctrl-C: give the partitions back
        left = getattr(stopped, "job_left_running", None)
        if left:  # the job may still publish: its leases and staging are its own
            print(f"sentiment-score: error: {left}; its leases and staging are left to it", file=sys.stderr)
            stopped.published = "the job may still publish: check with `sentiment-score verify`"
            raise
        _release(plan, plan.partitions)
        remove_staging(plan.staging_root)
        stopped.published = _published_when_stopped(plan)
        raise


def _published_when_stopped(plan: RunPlan) -> str:
    """What a run stopped mid-way (SIGTERM, Ctrl-C) had published, asked of the outputs, and what verify will say
    of each partition it touched: a stop between an Iceberg day's two table commits leaves one table replaced."""
    said = []
    try:
        for partition in plan.partitions:
            published = plan.publisher.published_by(partition, plan.run_id)
            if not published:
                continue
            check = plan.publisher.check(partition)
            if check.complete:
                said.append(f"run {plan.run_id} published {plan.publisher.name(partition)}; verify reports: OK")
                continue
            others = plan.publisher.partition_parts(partition)
            missing = [name for name in others if name not in published]
            said.append(
                f"run {plan.run_id} published {', '.join(published)}, not {', '.join(missing) or 'the rest'}; "
                f"verify reports: INCOMPLETE {check.message}"
            )
    except Exception as e:  # the outputs cannot be read now: say so rather than guess
        return f"what was published cannot be told ({type(e).__name__}: {e}); run `sentiment-score verify`"
    return "; ".join(said) or "nothing was published"


def _launch(
    config: ScoreConfig, plan: RunPlan, options: PipelineOptions, test_pipeline, backfill: bool, wait: bool, signals
):
    """With the partitions' leases held: clean dead staging, then submit, or run chunk by chunk and report."""
    _clean_dead_staging(plan, plan.partitions)

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
    if not wait:
        _, job = _run_pipeline(config, plan, options, test_pipeline, wait=False)
        print(
            f"submitted: run {plan.run_id}, job {job}, model {plan.model_version}; it publishes "
            + ", ".join(plan.publisher.name(p) for p in plan.partitions)
            + "; check with `sentiment-score verify`"
        )
        return ExitCode.OK

    return _run_chunks(config, plan, options, test_pipeline, backfill, started, signals)


def _run_chunks(
    config: ScoreConfig,
    plan: RunPlan,
    options: PipelineOptions,
    test_pipeline,
    backfill: bool,
    started: float,
    signals: RunSignals,
) -> int:
    """Runs the plan's partitions chunk by chunk (one chunk unless backfilling), then reports and returns the code."""
    size = config.backfill_chunk_days if backfill else max(len(plan.partitions), 1)
    results: list[dict] = []
    all_chunks = chunks(plan.partitions, size)
    progress = BackfillProgress(all_chunks, plan.rows_by_partition) if backfill else None
    for i, chunk in enumerate(all_chunks):
        if i:
            try:
                _renew(plan, chunk)
            except (lease.LeaseHeld, lease.LeaseError) as e:
                results += [{"partition": p, "status": "failed", "message": str(e), "rows": {}} for p in chunk]
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
        chunk_results, _ = _run_pipeline(config, chunk_plan, options, test_pipeline if i == 0 else None, wait=True)
        for result in chunk_results:
            _print_result(plan, result)
        results += chunk_results
        if progress:
            progress.finished(i)
    remove_staging(plan.staging_root)
    return _report(plan, results, started, signals)


def _report(plan: RunPlan, results: list[dict], started: float, signals: RunSignals) -> int:
    """Prints the run's outcome and writes its run summary; returns the exit code. Partitions refused at start-up
    are reported with those that failed while the pipeline ran."""
    control = control_root(plan.staging_root)
    wall = time.time() - started
    refused = [
        {"partition": p, "status": "failed", "message": f"refused at start-up: {why}", "rows": {}}
        for p, why in plan.failed.items()
    ]
    results = sorted(results + refused, key=lambda r: r["partition"])
    signals.record(results)  # run signals: every partition's result
    published = [r for r in results if r["status"] == "published"]
    failed = [r for r in results if r["status"] != "published"]
    if len(results) > 1 or failed or _read_run_summary(plan) is None:
        try:
            write_run_summary(control, plan.run_id, results, plan.skipped)
        except OSError as e:  # the partitions' outcomes stand (and were printed); the record of them is missing
            print(f"sentiment-score: error: cannot write the run summary: {e}", file=sys.stderr)
            return ExitCode.FAILED
    scored = sum(r["rows"]["scored"] for r in published)
    rejected = sum(r["rows"]["rejected"] for r in published)
    read = sum(r["rows"]["read"] for r in published)
    rate = read / wall if wall > 0 else 0.0
    if failed and len(results) == 1:
        name = plan.publisher.name(failed[0]["partition"])
        print(f"sentiment-score: error: {name}: not published: {failed[0]['message']}", file=sys.stderr)
        return ExitCode.FAILED
    if failed:
        for r in refused:
            print(
                f"sentiment-score: error: {plan.publisher.name(r['partition'])}: {r['message']}",
                file=sys.stderr,
            )
        names = "; ".join(f"{plan.publisher.name(r['partition'])} ({_short(r['message'])})" for r in failed)
        print(
            f"sentiment-score: error: {len(failed)} of {len(results)} partition(s) not published: {names}; "
            f"{len(published)} published; run summary {run_summary_path(control, plan.run_id)}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    print(
        f"done: {scored} scored + {rejected} rejected = {read} read in {wall:.1f}s ({rate:.0f} rows/s), "
        f"model {plan.model_version}, output {plan.output}"
    )
    return ExitCode.OK


def _short(message: str, limit: int = 400) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


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
