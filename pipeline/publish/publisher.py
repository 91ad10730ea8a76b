"""The output formats behind one interface: the commit step, verify and --skip-existing talk to a Publisher."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

PARQUET, ICEBERG = "parquet", "iceberg"
FORMATS = (PARQUET, ICEBERG)


@dataclass(frozen=True)
class PartitionCheck:
    """What `verify` found for one partition: complete or not, why, and the facts it was published with."""

    partition_dir: str
    complete: bool
    message: str
    manifest: dict | None = None


class Publisher(abc.ABC):
    """Where a run's partitions are published and how: one implementation per output format.

    Picklable (the commit step runs on the workers): it holds names and settings, and opens what it needs per call.
    shards: {"kind": "scores" | "rejects", "path", "rows"} Parquet files the writers staged under run-unique names.
    facts: the run's facts for the partition (run_id, model_version, model_dir, partition, rows, rejected_by_reason).
    reports: {file name: bytes}, summary.json among them.
    """

    output: str
    output_format: str
    # A column the shards must carry holding the partition's day (a table format that places files by their values).
    partition_column: str | None = None

    def shard_schemas(self, run_schema) -> dict:
        """The Arrow schemas the writers stage shards in: the run's scores and rejects (+ partition_column)."""
        schemas = {"scores": run_schema.scores_schema(), "rejects": run_schema.rejects_schema()}
        if self.partition_column:
            schemas = {k: s.append(pa.field(self.partition_column, pa.date32())) for k, s in schemas.items()}
        return schemas

    def prepare(self, schemas: dict) -> None:
        """Checked at start-up with the shard schemas: creates what the output needs, or raises OutputError naming
        what does not fit (an existing table with other columns). Folders need nothing made ahead."""
        return None

    @abc.abstractmethod
    def name(self, partition: str) -> str:
        """How messages name a partition of this output."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where and how this output publishes, in one line (what a dry run shows)."""

    @abc.abstractmethod
    def partitions_found(self) -> list[str] | None:
        """The dated partitions the output holds something of, in order ([] for an unpartitioned output), or None
        when the output holds nothing of this format (no such output). Reads only."""

    def format_found(self) -> str | None:
        """This output's format when it holds something of it (partitions_found is not None), else None."""
        return self.output_format if self.partitions_found() is not None else None

    @abc.abstractmethod
    def check_layout(self, dated: bool) -> None:
        """Raises ConfigError when the output cannot take partitions of this kind (dated or not)."""

    @abc.abstractmethod
    def publish(
        self, partition: str, shards: list[dict], facts: dict, reports: dict[str, bytes], fence: Callable[[], None]
    ) -> None:
        """Publishes the partition, replacing what was there, all at once; calls fence() immediately before the
        point of no return and publishes nothing when it raises. Raises OSError naming the path when a write fails."""

    @abc.abstractmethod
    def check(self, partition: str, count_rows: bool = True) -> PartitionCheck:
        """Whether the partition is published and whole; `manifest` holds its facts (run_id, model_version, rows)."""

    @abc.abstractmethod
    def published_summary(self, partition: str) -> dict | None:
        """The summary.json published with the partition, or None."""

    @abc.abstractmethod
    def previous_summary(self, partition: str) -> dict | None:
        """The summary of the latest published partition before this one (the report's drift baseline)."""

    def published_version(self, partition: str) -> str | None:
        """The model version a complete partition was scored by (what --skip-existing asks), or None."""
        check = self.check(partition, count_rows=False)
        return check.manifest.get("model_version") if check.complete else None
