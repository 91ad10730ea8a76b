"""The output formats behind one interface: the commit step, verify and --skip-existing talk to a Publisher."""

from __future__ import annotations

import abc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

PARQUET, ICEBERG = "parquet", "iceberg"
FORMATS = (PARQUET, ICEBERG)
# A test hook, off unless the environment names its point (the variable pipeline/run/graph.py's hook reads too): with
# SENTIMENT_SCORE_TEST_STOP_AT=publish-<step>, the process that publishes stops itself (SIGSTOP) right after that step
# of a publish (iceberg.STEPS), so a test can signal, kill or race a run at a known point of its commit.
TEST_STOP_ENV = "SENTIMENT_SCORE_TEST_STOP_AT"


def stop_here_if_asked(step: str) -> None:
    if os.environ.get(TEST_STOP_ENV) == f"publish-{step}":
        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass(frozen=True)
class PartitionCheck:
    """What `verify` found for one partition: complete or not, why, and the facts it was published with."""

    partition_dir: str
    complete: bool
    message: str
    manifest: dict | None = None


@dataclass(frozen=True)
class LeaseScope:
    """One lease a partition's publish needs: `fences` names what it fences (for messages), `directory` is the lease
    folder (pipeline/publish/lease.py) every run that publishes the same thing derives, whatever its --output."""

    fences: str
    directory: str


class Publisher(abc.ABC):
    """Where a run's partitions are published and how: one implementation per output format.

    Picklable (the commit step runs on the workers): it holds names and settings, and opens what it needs per call.
    shards: {"kind": "scores" | "rejects", "path", "rows"} Parquet files the writers staged under run-unique names.
    facts: the run's facts for the partition (run_id, model_version, model_dir, partition, rows, rejected_by_reason).
    reports: {file name: bytes}, summary.json among them.
    """

    output: str
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
    def lease_scopes(self, partition: str) -> tuple[LeaseScope, ...]:
        """The leases a run holds while it publishes the partition: keyed by what is published (a table's day, a
        folder's real path), so two runs that reach it by different outputs share them. Called at start-up, after
        prepare()."""

    @abc.abstractmethod
    def published_by(self, partition: str, run_id: str) -> list[str]:
        """What of the partition holds run_id's rows now (the names of the tables or the folder), for a run stopped
        while it published."""

    def partition_parts(self, partition: str) -> list[str]:
        """The names of what a partition's publish replaces, in published_by's terms (one folder; or each table)."""
        return [self.name(partition)]

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
