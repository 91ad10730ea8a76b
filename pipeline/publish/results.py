"""A run's outcome per partition (PartitionResult) and the run summary that records it, OUTPUT.staging/_runs/RUN.json,
written by the pipeline itself and again by a launcher that waited; the control root beside the output where run
summaries and staging live."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import storage
from pipeline.publish.publisher import RowCounts

_LOG = logging.getLogger(__name__)


class Status(StrEnum):
    PUBLISHED = "published"
    FAILED = "failed"


@dataclass(frozen=True)
class PartitionResult:
    """One partition's outcome in a run: published, or failed and why (message), with the rows counted (None when
    nothing was). output names the partition as its publisher does (set by the commit step); summary is its
    summary.json when at hand, for metrics (not part of the run summary's JSON).

    A published result's rows add up (scored + rejected = read): the commit step publishes nothing else."""

    partition: str
    status: Status
    message: str
    rows: RowCounts | None = None
    output: str | None = None
    summary: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "status", Status(self.status))
        if self.status is Status.PUBLISHED and (self.rows is None or not self.rows.add_up):
            raise ValueError(
                f"{self.partition or '(unpartitioned)'}: published, but its rows {self.rows} do not add up"
            )

    @property
    def published(self) -> bool:
        return self.status is Status.PUBLISHED

    def to_dict(self) -> dict:
        """The result as the run summary's JSON holds it: {"partition", "status", "message", "rows"} (rows {} when
        none were counted), and "output" when known."""
        record = {"partition": self.partition}
        if self.output is not None:
            record["output"] = self.output
        rows = self.rows.to_dict() if self.rows is not None else {}
        record.update(status=str(self.status), message=self.message, rows=rows)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> PartitionResult:
        rows = record.get("rows")
        return cls(
            partition=record["partition"],
            status=Status(record["status"]),
            message=record["message"],
            rows=RowCounts.from_dict(rows) if rows else None,
            output=record.get("output"),
        )

    @classmethod
    def failed(cls, partition: str, message: str, rows: RowCounts | None = None, output: str | None = None):
        return cls(partition, Status.FAILED, message, rows, output)


def control_root(staging_root: str) -> str:
    """OUTPUT.staging: the folder beside the output that holds run staging and run summaries (leases live where
    the publisher's LeaseScope says)."""
    return staging_root.rstrip("/").rsplit("/", 1)[0]


def remove_staging(staging_root: str) -> None:
    """Removes a run's staging folder (what is left after publishing: shards of retried bundles, refused
    partitions); best effort, since the next run's cleanup of dead staging catches anything left."""
    try:
        storage.delete_tree(staging_root)
    except Exception as e:
        _LOG.warning("could not remove staging %s: %s", staging_root, e)


def run_summary_path(control: str, run_id: str) -> str:
    return FileSystems.join(control, "_runs", f"{run_id}.json")


class WriteRunSummary(beam.DoFn):
    """Writes the run's outcome per partition to OUTPUT.staging/_runs/RUN_ID.json, from the pipeline itself, so a
    run submitted with --no-wait leaves the same record as one the launcher waited for."""

    def __init__(self, staging_root: str, run_id: str, expected_partitions: list[str]):
        self._staging_root = staging_root
        self._run_id = run_id
        self._expected = expected_partitions

    def process(self, results):
        by_partition = {r.partition: r for r in results}
        # the graph adds a marker for each planned partition, so none should be missing
        results = [by_partition.get(p) or PartitionResult.failed(p, "no commit result") for p in self._expected]
        try:
            write_run_summary(control_root(self._staging_root), self._run_id, results)
        except OSError as e:  # a launcher that waits reads the outcomes from the outputs and says it
            _LOG.error("cannot write the run summary: %s", e)
        remove_staging(self._staging_root)
        yield results


def write_run_summary(control: str, run_id: str, results: list[PartitionResult], skipped: dict | None = None) -> dict:
    """OUTPUT.staging/_runs/RUN_ID.json: the run's outcome per partition (published, or why not), and the days it
    skipped. Written by the pipeline (so --no-wait runs leave one) and again by a launcher that waited, with what
    only it knows (partitions refused at start-up, skipped days, every backfill chunk). Raises OSError naming the
    path when it cannot be written."""
    partitions = [r.to_dict() for r in results]
    failed = [r.partition or "(unpartitioned)" for r in results if not r.published]
    record = {
        "run_id": run_id,
        "finished_at": storage.utc_stamp(),
        "status": "failed" if failed else "ok",
        "failed_partitions": failed,
        "skipped_partitions": skipped or {},
        "partitions": partitions,
    }
    storage.write_json(run_summary_path(control, run_id), record)
    return record
