"""A run's outcome: each partition's result as the console prints it, the last line and exit code, the run summary
written when the pipeline could not, and what a stopped run had published."""

from __future__ import annotations

import re
import sys
import time

from pipeline.errors import ExitCode, job_error_names
from pipeline.publish.results import PartitionResult, Status, control_root, run_summary_path, write_run_summary
from pipeline.run.plan import RunPlan
from pipeline.run.telemetry import RunSignals
from pipeline.storage import read_json


def fatal(message: str) -> int:
    print(f"sentiment-score: error: {message}", file=sys.stderr)
    return ExitCode.FAILED


def cause(error: Exception) -> str:
    """The most useful line of a pipeline failure: our own error's message if a worker raised one."""
    message = " ".join(str(error).split())
    names = "|".join(job_error_names())
    ours = re.findall(rf"(?:{names}): (.+?)(?= \[while running|$)", message)
    if ours:
        return ours[-1][:600]
    return f"{type(error).__name__}: {message[-600:]}"


def read_run_summary(plan: RunPlan) -> dict | None:
    return read_json(run_summary_path(control_root(plan.staging_root), plan.run_id))


def outcome_from_manifest(plan: RunPlan, partition: str) -> PartitionResult:
    """A partition's outcome when the run summary is missing: published if its manifest names this run."""
    check = plan.publisher.check(partition, count_rows=False)
    if check.complete and check.manifest.run_id == plan.run_id:
        return PartitionResult(partition, Status.PUBLISHED, "published", check.manifest.rows)
    why = f"run {plan.run_id} ended without its run summary and did not publish this partition"
    return PartitionResult.failed(partition, why)


def print_result(plan: RunPlan, result: PartitionResult) -> None:
    name = plan.publisher.name(result.partition)
    if not result.published:
        if len(plan.partitions) > 1:  # a single partition's failure is the run's final line
            print(f"sentiment-score: error: {name}: not published: {result.message}", file=sys.stderr)
        return
    published = plan.publisher.published_summary(result.partition) or {}
    rows = result.rows
    flag = " DRIFT" if published.get("drift", {}).get("drift_flagged") else ""
    print(
        f"{name}: read {rows.read}, scored {rows.scored}, rejected {rows.rejected} "
        f"{published.get('rejected_by_reason', {})}{flag}"
    )


def published_when_stopped(plan: RunPlan) -> str:
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


def report(plan: RunPlan, results: list[PartitionResult], started: float, signals: RunSignals) -> int:
    """Prints the run's outcome and writes its run summary; returns the exit code. Partitions refused at start-up
    are reported with those that failed while the pipeline ran."""
    control = control_root(plan.staging_root)
    wall = time.time() - started
    refused = [PartitionResult.failed(p, f"refused at start-up: {why}") for p, why in plan.failed.items()]
    results = sorted(results + refused, key=lambda r: r.partition)
    signals.record(results)  # run signals: every partition's result
    published = [r for r in results if r.published]
    failed = [r for r in results if not r.published]
    if len(results) > 1 or failed or read_run_summary(plan) is None:
        try:
            write_run_summary(control, plan.run_id, results, plan.skipped)
        except OSError as e:  # the partitions' outcomes stand (and were printed); the record of them is missing
            print(f"sentiment-score: error: cannot write the run summary: {e}", file=sys.stderr)
            return ExitCode.FAILED
    scored = sum(r.rows.scored for r in published)
    rejected = sum(r.rows.rejected for r in published)
    read = sum(r.rows.read for r in published)
    rate = read / wall if wall > 0 else 0.0
    if failed and len(results) == 1:
        name = plan.publisher.name(failed[0].partition)
        print(f"sentiment-score: error: {name}: not published: {failed[0].message}", file=sys.stderr)
        return ExitCode.FAILED
    if failed:
        for r in refused:
            print(
                f"sentiment-score: error: {plan.publisher.name(r.partition)}: {r.message}",
                file=sys.stderr,
            )
        names = "; ".join(f"{plan.publisher.name(r.partition)} ({_short(r.message)})" for r in failed)
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
