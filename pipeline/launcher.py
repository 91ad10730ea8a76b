"""Runs a scoring or backfill pipeline from a config: plan and check, build the graph, run it, report."""

from __future__ import annotations

import argparse
import dataclasses
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
from pipeline import lease
from pipeline.commit import control_root, remove_staging, run_summary_path
from pipeline.config import LOCAL_RUNNERS, ConfigError, ScoreConfig, load_config
from pipeline.graph import build_pipeline
from pipeline.plan import OutputError, RunPlan, days_between, plan_run
from pipeline.publish import SUMMARY_FILE, check_partition, write_atomically
from pipeline.signals import RunSignals
from transforms.io import partition_path
from transforms.schema import InputError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LEASE_HELD = 0, 1, 2, 3
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
    if name in LOCAL_RUNNERS:
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


def _clean_dead_staging(plan: RunPlan, partitions: list[str]) -> None:
    """Removes other runs' staging for partitions this run now holds the lease of: no live run can be writing it.

    A run that holds no lease on a partition never touches its staging, so a live run's staging is never deleted.
    """
    control = control_root(plan.staging_root)
    current = plan.staging_root.rstrip("/")
    if "://" in control:
        for partition in partitions:
            pattern = FileSystems.join(partition_path(FileSystems.join(control, "*"), partition), "**")
            found = _list(pattern)
            runs = [p for p in found if not p[len(control) :].lstrip("/").startswith("_")]  # not leases or records
            _delete([p for p in runs if not p.startswith(current + "/")])
        return
    if not os.path.isdir(control):
        return
    for name in os.listdir(control):
        run_dir = os.path.join(control, name)
        if run_dir == current or name.startswith("_") or not os.path.isdir(run_dir):
            continue
        for partition in partitions:
            if partition:
                shutil.rmtree(partition_path(run_dir, partition), ignore_errors=True)
            else:  # an unpartitioned run stages its shards directly in its run folder
                for leftover in os.listdir(run_dir):
                    path = os.path.join(run_dir, leftover)
                    if os.path.isfile(path):
                        os.remove(path)
        try:
            os.rmdir(run_dir)  # only once a dead run's staging is empty
        except OSError:
            pass


def _release(plan: RunPlan, partitions: list[str]) -> None:
    for partition in partitions:
        try:
            lease.release(control_root(plan.staging_root), partition, plan.run_id)
        except Exception as e:  # the lease then lapses at its expiry
            _LOG.warning("could not release the lease of %s: %s", partition_path(plan.output, partition), e)


def _cause(error: Exception) -> str:
    """The most useful line of a pipeline failure: our own error's message if a worker raised one."""
    message = " ".join(str(error).split())
    ours = re.findall(
        r"(?:InputError|BundleError|OutputError|LeaseHeld|LeaseError): (.+?)(?= \[while running|$)", message
    )
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


def _read_run_summary(plan: RunPlan) -> dict | None:
    try:
        with FileSystems.open(run_summary_path(control_root(plan.staging_root), plan.run_id)) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


def _chunks(partitions: list[str], size: int) -> list[list[str]]:
    return [partitions[i : i + size] for i in range(0, len(partitions), size)] or [[]]


def _run_pipeline(
    config: ScoreConfig, plan: RunPlan, options: PipelineOptions, test_pipeline, wait: bool
) -> tuple[list[dict], str | None]:
    """Runs one pipeline over plan's partitions; returns (per-partition results, job id when not waiting)."""
    total = sum(plan.rows_by_partition[p] for p in plan.partitions)
    started = time.time()
    try:
        pipeline = test_pipeline or beam.Pipeline(runner=make_runner(options), options=options)
        build_pipeline(pipeline, config, plan)
        result = pipeline.run()
        if not wait:  # Dataflow's result has job_id(); the portable runner's keeps the Job API's id
            job_id = result.job_id() if callable(getattr(result, "job_id", None)) else getattr(result, "_job_id", None)
            return [], job_id or "(the runner gave no job id)"
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
        remove_staging(plan.staging_root)
        _release(plan, plan.partitions)
        why = f"run {plan.run_id} failed: {_cause(e)}"
        return [{"partition": p, "status": "failed", "message": why, "rows": {}} for p in plan.partitions], None
    summary = _read_run_summary(plan)
    if summary is None or summary.get("run_id") != plan.run_id:
        why = f"run {plan.run_id} ended without its run summary"
        return [{"partition": p, "status": "failed", "message": why, "rows": {}} for p in plan.partitions], None
    return summary["partitions"], None


def _print_result(plan: RunPlan, result: dict) -> None:
    name = partition_path(plan.output, result["partition"])
    if result["status"] != "published":
        if len(plan.partitions) > 1:  # a single partition's failure is the run's final line
            print(f"sentiment-score: error: {name}: not published: {result['message']}", file=sys.stderr)
        return
    published = _read_json(FileSystems.join(name, SUMMARY_FILE)) or {}
    rows = result["rows"]
    flag = " DRIFT" if published.get("drift", {}).get("drift_flagged") else ""
    print(
        f"{name}: read {rows['read']}, scored {rows['scored']}, rejected {rows['rejected']} "
        f"{published.get('rejected_by_reason', {})}{flag}"
    )


def _read_json(path: str) -> dict | None:
    try:
        with FileSystems.open(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


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
    # --- run signals (pipeline/signals.py): metrics file and lineage events at the end of every run ---
    signals = RunSignals(config, "backfill" if backfill else "score", dates)
    code = EXIT_FAILED
    try:
        code = _execute(config, dates, beam_flags, backfill, test_pipeline, take_over_lease, wait, signals)
        return code
    except ConfigError as e:
        code = EXIT_USAGE
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
        plan = plan_run(config, dates, backfill)
    except (BundleError, InputError, OutputError) as e:
        signals.fail(str(e))
        return _fatal(str(e))
    signals.start(plan)  # run signals: START
    for day, why in plan.skipped.items():
        _LOG.warning("skipping dt=%s: %s", day, why)
    if not plan.partitions:
        print(f"nothing to score: every day was skipped ({len(plan.skipped)})")
        return EXIT_OK

    control = control_root(plan.staging_root)
    expiry = config.lease_expiry_hours * 3600
    taken: list[str] = []
    try:
        for partition in plan.partitions:
            lease.acquire(control, partition, plan.run_id, plan.started_at, expiry, take_over_lease)
            taken.append(partition)
    except lease.LeaseHeld as e:
        _release(plan, taken)
        signals.fail(str(e))
        print(f"sentiment-score: error: {e}", file=sys.stderr)
        return EXIT_LEASE_HELD
    except lease.LeaseError as e:
        _release(plan, taken)
        signals.fail(str(e))
        return _fatal(str(e))
    except BaseException:  # SIGTERM or Ctrl-C while taking them
        _release(plan, taken)
        raise
    try:
        return _launch(config, plan, options, test_pipeline, backfill, wait, signals)
    except BaseException:  # SIGTERM (a scheduler's timeout) or Ctrl-C: give the partitions back before exiting
        _release(plan, plan.partitions)
        remove_staging(plan.staging_root)
        raise


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
            + ", ".join(partition_path(plan.output, p) for p in plan.partitions)
            + "; check with `sentiment-score verify`"
        )
        return EXIT_OK

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
    control = control_root(plan.staging_root)
    expiry = config.lease_expiry_hours * 3600
    size = config.backfill_chunk_days if backfill else max(len(plan.partitions), 1)
    results: list[dict] = []
    for i, chunk in enumerate(_chunks(plan.partitions, size)):
        if i:
            try:
                for partition in chunk:
                    lease.renew(control, partition, plan.run_id, expiry)
            except (lease.LeaseHeld, lease.LeaseError) as e:
                results += [{"partition": p, "status": "failed", "message": str(e), "rows": {}} for p in chunk]
                continue
            _LOG.info("backfill chunk %d: %s .. %s", i + 1, chunk[0], chunk[-1])
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
    wall = time.time() - started
    remove_staging(plan.staging_root)
    signals.record(results)  # run signals: the partitions' results

    published = [r for r in results if r["status"] == "published"]
    failed = [r for r in results if r["status"] != "published"]
    if len(results) > 1 or failed:
        record = {
            "run_id": plan.run_id,
            "status": "failed" if failed else "ok",
            "failed_partitions": [r["partition"] or "(unpartitioned)" for r in failed],
            "skipped_partitions": plan.skipped,
            "partitions": results,
        }
        write_atomically(run_summary_path(control, plan.run_id), json.dumps(record, indent=2).encode("utf-8"))
    scored = sum(r["rows"]["scored"] for r in published)
    rejected = sum(r["rows"]["rejected"] for r in published)
    read = sum(r["rows"]["read"] for r in published)
    rate = read / wall if wall > 0 else 0.0
    if failed and len(results) == 1:
        name = partition_path(plan.output, failed[0]["partition"])
        print(f"sentiment-score: error: {name}: not published: {failed[0]['message']}", file=sys.stderr)
        return EXIT_FAILED
    if failed:
        names = ", ".join(partition_path(plan.output, r["partition"]) for r in failed)
        print(
            f"sentiment-score: error: {len(failed)} of {len(results)} partition(s) not published: {names}; "
            f"{len(published)} published; run summary {run_summary_path(control, plan.run_id)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(
        f"done: {scored} scored + {rejected} rejected = {read} read in {wall:.1f}s ({rate:.0f} rows/s), "
        f"model {plan.model_version}, output {plan.output}"
    )
    return EXIT_OK


def run_score(
    config_path: str | None, overrides: dict, beam_flags: list[str], take_over_lease: bool = False, wait: bool = True
) -> int:
    config = load_config(config_path, overrides)
    dates = [config.date] if config.date else None
    return execute(config, dates, beam_flags, take_over_lease=take_over_lease, wait=wait)


def run_backfill(
    config_path: str | None,
    overrides: dict,
    beam_flags: list[str],
    start: str,
    end: str,
    take_over_lease: bool = False,
    wait: bool = True,
) -> int:
    config = load_config(config_path, overrides)
    try:
        dates = days_between(start, end)
    except InputError as e:
        raise ConfigError(str(e)) from None
    return execute(config, dates, beam_flags, backfill=True, take_over_lease=take_over_lease, wait=wait)


def run_verify(output: str, dates: list[str] | None, beam_flags: list[str]) -> int:
    """Checks published partitions against their manifests: one line each; 0 when all are complete, else 1."""
    FileSystems.set_options(pipeline_options(ScoreConfig(beam={}), beam_flags))  # credentials, endpoints
    partitions = dates if dates is not None else [""]
    incomplete = []
    for partition in partitions:
        check = check_partition(partition_path(output, partition))
        print(("OK " if check.complete else "INCOMPLETE ") + check.message)
        if not check.complete:
            incomplete.append(partition_path(output, partition))
    if incomplete:
        print(f"verify: {len(incomplete)} of {len(partitions)} partition(s) incomplete: {', '.join(incomplete)}")
        return EXIT_FAILED
    print(f"verify: all {len(partitions)} partition(s) complete")
    return EXIT_OK
