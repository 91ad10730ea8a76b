"""The output formats behind one interface: the commit step, verify and --skip-existing talk to a Publisher.

Inspection (state, check, published_version, the summaries) reads only, whatever it is pointed at: it creates no
folder, catalog or table, and says so when the root holds nothing or another format's output. Only prepare and
publish write."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline.errors import ConfigError

if TYPE_CHECKING:  # transforms.io imports Beam: not imported with the interface (the CLI imports it first)
    from transforms.io import Shard

PARQUET, ICEBERG = "parquet", "iceberg"
FORMATS = (PARQUET, ICEBERG)
# The Iceberg output's tables unless the config's iceberg_tables names others (here, not with the Iceberg modules, so
# the config reads it without importing them and Beam's filesystems).
DEFAULT_ICEBERG_TABLES = {"scores": "sentiment.review_scores", "rejects": "sentiment.review_rejects"}
# The staging folder of an unpartitioned output's shards: a named folder like a day's, so every partition's staging
# is one folder that a cleanup can name without touching another partition's.
UNPARTITIONED_STAGING = "_output"


@dataclass(frozen=True)
class RowCounts:
    """A partition's rows: read from its input, scored, and rejected. Written in JSON as {"read", "scored",
    "rejected"} (the manifest, summary.json, the run summary)."""

    read: int
    scored: int
    rejected: int

    @property
    def add_up(self) -> bool:
        """The run's invariant: every row read was scored or rejected, none lost or doubled."""
        return self.scored + self.rejected == self.read

    def to_dict(self) -> dict:
        return {"read": self.read, "scored": self.scored, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, record: dict) -> RowCounts:
        return cls(int(record["read"]), int(record["scored"]), int(record["rejected"]))


@dataclass(frozen=True)
class PartitionFacts:
    """The facts a partition is published with (the Parquet manifest's, an Iceberg day's snapshot summary): the run
    and model that scored it and its rows; model_dir, partition and rejected_by_reason where the format keeps them."""

    run_id: str
    model_version: str
    rows: RowCounts
    model_dir: str | None = None
    partition: str | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The facts in the manifest's JSON, keys in the order `_SUCCESS` has always held them."""
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "model_dir": self.model_dir,
            "partition": self.partition,
            "rows": self.rows.to_dict(),
            "rejected_by_reason": dict(self.rejected_by_reason),
        }

    @classmethod
    def from_dict(cls, record: dict) -> PartitionFacts:
        """The facts of a manifest (other keys, such as its files, are left to the manifest's reader)."""
        return cls(
            run_id=record["run_id"],
            model_version=record["model_version"],
            rows=RowCounts.from_dict(record["rows"]),
            model_dir=record.get("model_dir"),
            partition=record.get("partition"),
            rejected_by_reason=dict(record.get("rejected_by_reason") or {}),
        )


@dataclass(frozen=True)
class PartitionCheck:
    """What `verify` found for one partition: complete or not, why, and the facts it was published with."""

    name: str  # the partition as messages name it (Publisher.name): its folder, or TABLE dt=D
    complete: bool
    message: str
    manifest: PartitionFacts | None = None


@dataclass(frozen=True)
class OutputDataset:
    """One dataset a run publishes into, as lineage names it: by where it lives (a folder dataset by its root, a
    table by its location; never one per partition), and for a catalog table the catalog's name for it.

    kinds: what it holds, ("scores",), ("rejects",) or both (the first is what its readers read). location: a path or
    URI. table: the catalog's name (namespace.table), or None.
    catalog: where that name is defined (the catalog's uri, or its warehouse), or None. partition_key: the
    dimension a partition of the dataset is named by (its day), or None for an unpartitioned output.
    """

    kinds: tuple[str, ...]
    location: str
    table: str | None = None
    catalog: str | None = None
    partition_key: str | None = None


@dataclass(frozen=True)
class OutputState:
    """What an output root holds, found by reading only: what verify and the layout checks go by.

    exists: the root holds an output of the publisher's format. other_format: another format whose output the root
    holds (a root holds one format), or None. message: the fact in words, naming the root.
    """

    exists: bool
    other_format: str | None
    message: str


@dataclass(frozen=True)
class LeaseScope:
    """One lease a partition's publish needs: `fences` names what it fences (for messages), `directory` is the lease
    folder (pipeline/publish/lease.py) every run that publishes the same thing derives, whatever its --output."""

    fences: str
    directory: str


class Publisher(abc.ABC):
    """Where a run's partitions are published and how: one implementation per output format.

    Picklable (the commit step runs on the workers): it holds names and settings, and opens what it needs per call.
    shards: transforms.io.Shard records, the Parquet files the writers staged under run-unique names.
    facts: the run's PartitionFacts for the partition.
    reports: {file name: bytes}, summary.json among them.
    """

    output: str
    # The output_format this publisher publishes.
    format: str
    # A column the shards must carry holding the partition's day (a table format that places files by their values).
    partition_column: str | None = None
    # Whether the root holds each other format's output, {format: holds(root) -> bool}: set by the factory, which
    # knows every format (this module imports none).
    other_formats: dict[str, Callable[[str], bool]] = {}

    # The name of the run's summary among the reports publish() is given (what published_summary reads back).
    summary_report = "summary.json"

    def shard_schemas(self, run_schema) -> dict:
        """The Arrow schemas the writers stage shards in: the run's scores and rejects (+ partition_column)."""
        schemas = {"scores": run_schema.scores_schema(), "rejects": run_schema.rejects_schema()}
        if self.partition_column:
            schemas = {k: s.append(pa.field(self.partition_column, pa.date32())) for k, s in schemas.items()}
        return schemas

    def prepare(self, schemas: dict, create: bool = True) -> None:
        """Checked at start-up with the shard schemas: creates what the output needs, or raises OutputError naming
        what does not fit (an existing table with other columns). create=False when the schemas' kinds are a guess
        (no input file to take them from): what exists is checked, nothing is made from them. Folders need nothing
        made ahead."""
        return None

    def refuses_guessed_kinds(self, partition: str) -> str | None:
        """Why the partition cannot be published when the run's column kinds are a guess (no review row and no
        column_kinds setting to take them from), or None: an output whose types such a guess would fix refuses."""
        return None

    def stored_schemas(self) -> dict:
        """{"scores" | "rejects": the Arrow schema the output already holds}, for a run with no input file to take
        the id and text kinds from; empty when the output holds no typed store (folders: each partition stands
        alone)."""
        return {}

    @abc.abstractmethod
    def name(self, partition: str) -> str:
        """How messages name a partition of this output."""

    def staging_dir(self, staging_root: str, partition: str) -> str:
        """The folder below a run's staging root where its writers stage one partition's shards: each partition's
        own (RUN/dt=D, or RUN/_output without a date), so a cleanup can name one partition's staging without
        touching another's (staging_root may be a glob over runs)."""
        from pipeline import storage  # Beam's FileSystems: not imported with the interface (the CLI imports it first)

        return storage.join(staging_root, f"dt={partition}" if partition else UNPARTITIONED_STAGING)

    @abc.abstractmethod
    def output_datasets(self) -> list[OutputDataset]:
        """The datasets this output publishes into, as lineage names them (reads only; a table not created yet is
        left out). The writers report them as Beam Lineage sinks, the run's events as its outputs."""

    @abc.abstractmethod
    def holds_output(self) -> bool:
        """Whether the root holds an output of this format (reads only)."""

    def state(self) -> OutputState:
        """What the root holds, found without writing anything. Once found holding this format's output, that is
        kept (a run only adds to its output), so asking per day lists the root once."""
        if getattr(self, "_holds", False) or self.holds_output():
            self._holds = True
            return OutputState(True, None, f"{self.output}: holds output_format {self.format}")
        for other, holds in self.other_formats.items():
            if holds(self.output):
                return OutputState(False, other, f"{self.output} holds output_format {other}, not {self.format}")
        return OutputState(False, None, f"{self.output}: no such output")

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
    def describe(self) -> str:
        """Where and how this output publishes, in one line (what a dry run shows)."""

    @abc.abstractmethod
    def partitions_found(self) -> list[str] | None:
        """The dated partitions the output holds something of, in order ([] for an unpartitioned output), or None
        when the output holds nothing of this format (no such output). Reads only."""

    def check_layout(self, dated: bool) -> None:
        """Raises ConfigError, before anything is written, when the root holds another format's output (a root
        holds one format: readers of either break on the other's files) or cannot take partitions of this kind.
        The partitioning first: it also refuses what cannot be an output at all (an object store without a catalog)
        before the root is listed."""
        self.check_partitioning(dated)
        other = self.state().other_format
        if other is not None:
            raise ConfigError(
                f"output {self.output} holds output_format {other}: a run with output_format {self.format} would "
                f"put its files beside them and break both formats' readers; choose another output, or run with "
                f"--output-format {other}"
            )

    @abc.abstractmethod
    def check_partitioning(self, dated: bool) -> None:
        """Raises ConfigError when the output cannot take partitions of this kind (dated or not)."""

    @abc.abstractmethod
    def publish(
        self,
        partition: str,
        shards: list[Shard],
        facts: PartitionFacts,
        reports: dict[str, bytes],
        fence: Callable[[], None],
    ) -> None:
        """Publishes the partition, replacing what was there, all at once; calls fence() immediately before the
        point of no return and publishes nothing when it raises. Raises OSError naming the path when a write fails."""

    @abc.abstractmethod
    def check(self, partition: str, count_rows: bool = True) -> PartitionCheck:
        """Whether the partition is published and whole; `manifest` holds its PartitionFacts."""

    @abc.abstractmethod
    def published_summary(self, partition: str) -> dict | None:
        """The summary.json published with the partition, or None."""

    @abc.abstractmethod
    def previous_summary(self, partition: str) -> dict | None:
        """The summary of the latest published partition before this one (the report's drift baseline)."""

    def published_version(self, partition: str) -> str | None:
        """The model version a complete partition was scored by (what --skip-existing asks), or None."""
        check = self.check(partition, count_rows=False)
        return check.manifest.model_version if check.complete else None
