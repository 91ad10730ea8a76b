"""A run's outcome as Prometheus metrics: a textfile for node_exporter's collector, or a push to a Pushgateway."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Gauge, Info
from prometheus_client.exposition import generate_latest, pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "sentiment_score"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
PARTITION_LAST_SUCCESS = f"{PREFIX}_partition_last_success_timestamp_seconds"
UNPARTITIONED = "unpartitioned"  # the partition label of a run without --date (a label cannot be empty)
PUSH_JOB = "sentiment_score"


def partition_label(partition: str) -> str:
    return partition or UNPARTITIONED


def previous_successes(path: str) -> dict[str, dict[str, float]]:
    """The last-success timestamps in an earlier metrics file: {"job": {"": t}, "partition": {label: t}}.

    A run rewrites the whole file, so a failed run carries these over: an alert on the last success keeps seeing
    the last one instead of no series at all.
    """
    found: dict[str, dict[str, float]] = {"job": {}, "partition": {}}
    try:
        with open(path, encoding="utf-8") as f:
            families = list(text_string_to_metric_families(f.read()))
    except (OSError, ValueError):  # no earlier file, or not one of ours: nothing to carry over
        return found
    for family in families:
        for sample in family.samples:
            if sample.name == LAST_SUCCESS:
                found["job"][""] = sample.value
            elif sample.name == PARTITION_LAST_SUCCESS and "partition" in sample.labels:
                found["partition"][sample.labels["partition"]] = sample.value
    return found


def build_registry(
    outcome, carried: dict[str, dict[str, float]] | None = None, successes: bool = True
) -> CollectorRegistry:
    """The run's metrics in their own registry (never the process-wide default, which holds Python's own).

    outcome is a pipeline.run.telemetry.RunOutcome (its results PartitionResult records of pipeline/publish/commit.py,
    read by their attributes: this room imports no other). carried holds earlier last-success timestamps to keep (see
    previous_successes); the ones of partitions this run published are replaced. successes=False leaves the two
    last-success metrics out altogether.
    """
    registry = CollectorRegistry()
    labels = ["partition", "outcome"]
    read = Gauge(f"{PREFIX}_rows_read", "Review rows read, per partition and its outcome", labels, registry=registry)
    scored = Gauge(f"{PREFIX}_rows_scored", "Rows scored, per partition and its outcome", labels, registry=registry)
    rejected = Gauge(
        f"{PREFIX}_rows_rejected", "Rows rejected, per partition and its outcome", labels, registry=registry
    )
    by_reason = Gauge(
        f"{PREFIX}_rows_rejected_by_reason",
        "Rows rejected, per partition and reject reason code",
        ["partition", "reason"],
        registry=registry,
    )
    published = Gauge(
        f"{PREFIX}_partition_published",
        "1 if this run published the partition, 0 if it was planned or asked for and not published",
        ["partition"],
        registry=registry,
    )
    ratio = Gauge(
        f"{PREFIX}_reject_ratio", "Share of the partition's rows rejected (0 to 1)", ["partition"], registry=registry
    )
    psi = Gauge(
        f"{PREFIX}_score_psi",
        "Population stability index of the partition's scores against the previous partition",
        ["partition"],
        registry=registry,
    )
    success_registry = registry if successes else CollectorRegistry()
    partition_success = Gauge(
        PARTITION_LAST_SUCCESS,
        "Unix time the partition was last published",
        ["partition"],
        registry=success_registry,
    )
    Gauge(f"{PREFIX}_run_duration_seconds", "Wall time of the run", registry=registry).set(outcome.duration)
    Gauge(f"{PREFIX}_run_exit_status", "The run's process exit code (0 done)", registry=registry).set(outcome.exit_code)
    Gauge(f"{PREFIX}_run_end_timestamp_seconds", "Unix time the run ended", registry=registry).set(outcome.ended_at)
    Info(f"{PREFIX}_run", "The run", registry=registry).info(
        {"run_id": outcome.run_id or "", "command": outcome.command}
    )
    Info(f"{PREFIX}_model", "The model bundle the run scored with", registry=registry).info(
        {"version": outcome.model_version or ""}
    )

    carried = carried or {"job": {}, "partition": {}}
    # Every partition the run planned or reported on has series: one refused at start-up or failed mid-run says
    # partition_published 0 and keeps its last success from the file this one replaces.
    this_run = {partition_label(p) for p in [*outcome.partitions, *(r.partition for r in outcome.results)]}
    for label, when in carried["partition"].items():
        if label in this_run:
            partition_success.labels(partition=label).set(when)
    for label in sorted(this_run):
        published.labels(partition=label).set(0)
    for result in outcome.results:
        label = partition_label(result.partition)
        state = "published" if result.published else "failed"
        rows = result.rows
        if rows is not None:
            read.labels(partition=label, outcome=state).set(rows.read)
            scored.labels(partition=label, outcome=state).set(rows.scored)
            rejected.labels(partition=label, outcome=state).set(rows.rejected)
            if rows.read:
                ratio.labels(partition=label).set(rows.rejected / rows.read)
        summary = result.summary or {}
        for reason, count in (summary.get("rejected_by_reason") or {}).items():
            by_reason.labels(partition=label, reason=reason).set(count)
        value = (summary.get("drift") or {}).get("psi")
        if value is not None:
            psi.labels(partition=label).set(value)
        if state == "published":
            published.labels(partition=label).set(1)
            partition_success.labels(partition=label).set(outcome.ended_at)
    last = outcome.ended_at if outcome.exit_code == 0 and not outcome.submitted else carried["job"].get("")
    if last is not None:  # a job that never succeeded has no series (alert on its absence), not a 0
        Gauge(LAST_SUCCESS, "Unix time of the job's last run that exited 0", registry=success_registry).set(last)
    return registry


def generate_text(outcome) -> str:
    """The run's metrics in the text exposition format, as the file holds them (nothing carried over)."""
    return generate_latest(build_registry(outcome)).decode("utf-8")


def write_metrics_file(path: str, outcome) -> None:
    """Writes the run's metrics to path atomically (a temporary file in the same folder, then a rename)."""
    registry = build_registry(outcome, previous_successes(path))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_to_textfile(path, registry)


def push_metrics(url: str, outcome, timeout: float = 10.0) -> None:
    """Pushes the run's metrics to a Pushgateway (POST: a failed run leaves the last success there as it was)."""
    # POST replaces only the metrics pushed: a failed run leaves the gateway's last-success series as they were.
    registry = build_registry(outcome, successes=outcome.exit_code == 0 and not outcome.submitted)
    pushadd_to_gateway(url, job=PUSH_JOB, registry=registry, timeout=timeout)
