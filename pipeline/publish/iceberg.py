"""The Publisher for output_format: iceberg (pipeline/publish/publisher.py): each day into the job's two Iceberg
tables (read through iceberg_tables.OutputTables, changed through iceberg_commit.DayCommit), its reports into
OUTPUT/reports/dt=D/RUN/, one lease per table-day."""

from __future__ import annotations

import os

import pyarrow as pa

from pipeline import storage
from pipeline.errors import ConfigError, OutputError
from pipeline.publish import lease
from pipeline.publish.iceberg_commit import DayCommit, IcebergPublishError
from pipeline.publish.iceberg_tables import (
    CATALOG_FILE,
    CATALOG_NAME,
    PARTITION_COLUMN,
    SUMMARY_PREFIX,
    WAREHOUSE_DIR,
    IcebergSchemaError,
    NoSuchOutput,
    OutputTables,
    day_facts,
    day_run,
)
from pipeline.publish.publisher import (
    DEFAULT_ICEBERG_TABLES,
    ICEBERG,
    LeaseScope,
    OutputDataset,
    PartitionCheck,
    PartitionFacts,
    Publisher,
    RowCounts,
)
from transforms.schema import DETAIL, MODEL_VERSION, REASON, SCORE


def required_columns(columns) -> dict[str, set[str]]:
    """The columns of each table that never hold nulls (transforms/validate.py rejects a row with a null id, and one
    whose score is not a number): the scores' ids, score, model version and day; the rejects' reason, detail and day.
    A reject's ids and raw inputs may be null: that can be why it was rejected."""
    return {
        "scores": {columns.review_id, columns.customer_id, SCORE, MODEL_VERSION, PARTITION_COLUMN},
        "rejects": {REASON, DETAIL, PARTITION_COLUMN},
    }


REPORTS_DIR = "reports"


def holds_iceberg_output(root: str) -> bool:
    """Whether a root holds this format's files: the embedded catalog, its warehouse, or reports (reads only)."""
    if storage.is_remote(root):
        return bool(storage.list_paths(storage.join(root, REPORTS_DIR, "**")))
    return any(os.path.exists(os.path.join(root, name)) for name in (CATALOG_FILE, WAREHOUSE_DIR, REPORTS_DIR))


class IcebergPublisher(Publisher):
    """Publishes each day into the Iceberg tables (a DayCommit over OutputTables) and its reports into
    OUTPUT/reports/dt=D/RUN/; checks a day by reading the tables (OutputTables).

    The reports of the run whose snapshot is current for a day are the day's reports: a publish writes them before
    its commit (so a crash leaves no summary without its rows), and removes other runs' report folders of that day
    after it. Picklable: the catalog is opened per process on first use.
    """

    format = ICEBERG
    partition_column = PARTITION_COLUMN

    def __init__(
        self,
        output: str,
        catalog: dict | None = None,
        table_names: dict | None = None,
        retention_days: float | None = None,
    ):
        self.output = output
        self._catalog = dict(catalog) if catalog else None
        self._names = dict(table_names or DEFAULT_ICEBERG_TABLES)
        self._retention_days = retention_days
        self._tables: OutputTables | None = None

    def __getstate__(self):
        return {**self.__dict__, "_tables": None}

    @property
    def tables(self) -> OutputTables:
        """The tables, to read and inspect."""
        if self._tables is None:
            self._tables = OutputTables(self.output, self._catalog, self._names["scores"], self._names["rejects"])
        return self._tables

    def day_commit(self) -> DayCommit:
        """What changes the tables, with the run's retention."""
        return DayCommit(self.tables, self._retention_days)

    def shard_schemas(self, run_schema) -> dict:
        """The run's shard schemas with the columns that never hold nulls non-nullable, so the tables created from
        them mark those columns `required` (readers and engines rely on it: no null checks, NOT NULL in SQL)."""
        schemas = super().shard_schemas(run_schema)
        never_null = required_columns(run_schema.columns)
        return {
            kind: pa.schema([f.with_nullable(f.name not in never_null[kind]) for f in schema])
            for kind, schema in schemas.items()
        }

    def name(self, partition: str) -> str:
        return f"{self._names['scores']} dt={partition}" if partition else self._names["scores"]

    def holds_output(self) -> bool:
        return holds_iceberg_output(self.output)

    def _nothing_to_read(self) -> str | None:
        """Why inspection has nothing to read (no embedded catalog: the root holds nothing, or another format), or
        None. A configured catalog is read as it is (read-only), whatever the root holds."""
        if self._catalog is not None:
            return None
        state = self.state()
        return None if state.exists else state.message

    def output_datasets(self) -> list[OutputDataset]:
        """Each table by its location, with its name in the catalog (read-only; tables not created yet left out)."""
        from pyiceberg.exceptions import NoSuchTableError

        if self._nothing_to_read():
            return []
        try:
            reader = self.tables.reader
        except OutputError:
            return []
        datasets = []
        for kind in ("scores", "rejects"):
            name = self._names[kind]
            try:
                location = reader.load_table(name).location()
            except NoSuchTableError:
                continue
            datasets.append(OutputDataset((kind,), location, name, self.tables.identity(), PARTITION_COLUMN))
        return datasets

    def lease_scopes(self, partition: str) -> tuple[LeaseScope, ...]:
        """One lease per table and day, in a folder beside the table's location, TABLE_LOCATION.leases/dt=D: every
        run that publishes into the table finds it there, through whichever --output, config or catalog name, and
        it sits outside the location that orphan-file removal sweeps.

        Why files beside the table rather than the lease as a table property (taken, renewed and released by
        catalog commits, so that the catalog's compare-and-swap fences a publish commit), measured with
        `python benchmarks/lease_store_latency.py --snapshots 0,365 --repeat 20` (SQLite catalog, local disk,
        2-core host): a file lease taken and released costs 8.8 ms whatever the table holds; one lease step as a
        property commit 36 ms on a new table and 121 ms once a year of nights (365 snapshots) has grown the
        metadata file it rewrites to 240 KiB, with at least three steps per table-day and run (take, renew before
        the commit, release), each a new metadata file, each contending for the same compare-and-swap as every
        other day's publish of the table. Nor would it fence better: pyiceberg's own commit retry re-applies a
        snapshot on the refreshed table without re-reading properties, and no catalog commit requirement asserts
        a property (a REST catalog accepts none but its own); and a catalog has no clock to judge expiry by.
        The fence still holds at each commit's point of no return: publish checks it after the table is loaded
        and before its commit, whose compare-and-swap fails if anything changed the table in between (the retry
        then refuses a change to this day, see _commit_day), and a new holder can only commit after it took the
        lease, that is after the check.
        """
        catalog = self.tables.catalog_properties.get("name", CATALOG_NAME)
        scopes = []
        for kind in ("rejects", "scores"):
            name = self.tables.table_names[kind]
            try:
                location = self.day_commit()._table(kind).location()
            except Exception as e:  # an unreachable catalog, a table dropped since start-up
                why = f"{type(e).__name__}: {e}"
                raise lease.LeaseError(f"table {name}: cannot find where its leases live ({why})") from None
            folder = storage.join(f"{storage.real_path(location)}.leases", f"{PARTITION_COLUMN}={partition}")
            scopes.append(LeaseScope(f"table {name} (catalog {catalog}) {PARTITION_COLUMN}={partition}", folder))
        return tuple(scopes)

    def refuses_guessed_kinds(self, partition: str) -> str | None:
        """A table that does not exist yet takes its column types from the first rows it is given (or column_kinds):
        never from a guess made with no file, which would fix them for every night after (review ids as long)."""
        for kind in ("rejects", "scores"):
            if not self.day_commit()._exists_table(kind):
                return (
                    f"table {self._names[kind]} does not exist yet and {partition} has no rows to take its column "
                    f"types from: not published (the first day with rows creates the tables, or state the kinds: "
                    f"setting column_kinds; score this day again after that)"
                )
        return None

    def partition_parts(self, partition: str) -> list[str]:
        return [f"{self.tables.table_names[kind]} {PARTITION_COLUMN}={partition}" for kind in ("rejects", "scores")]

    def published_by(self, partition: str, run_id: str) -> list[str]:
        from pyiceberg.exceptions import NoSuchTableError

        found = []
        for kind in ("rejects", "scores"):
            name = self.tables.table_names[kind]
            try:
                table = self.tables.reader.load_table(name)
            except NoSuchTableError:
                continue
            if day_run(table, partition) == run_id:
                found.append(f"{name} {PARTITION_COLUMN}={partition}")
        return found

    def describe(self) -> str:
        where = self._catalog or OutputTables.default_catalog(self.output)
        catalog = where.get("uri") or where.get("type", "?")
        return (
            f"iceberg tables {self._names['scores']} and {self._names['rejects']} (one snapshot per table per day) "
            f"in catalog {catalog}, reports under {storage.join(self.output, REPORTS_DIR)}"
        )

    def partitions_found(self) -> list[str] | None:
        """The days the scores table holds; None when there is no such table. Reads only (the reader catalog)."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if self._nothing_to_read():
            return None
        try:
            table = self.tables.reader.load_table(self._names["scores"])
        except (NoSuchTableError, NoSuchNamespaceError, NoSuchOutput):
            return None
        if table.current_snapshot() is None:  # created, nothing committed yet (a run stopped before its scores)
            return []
        partitions = table.inspect.partitions()
        if "partition" not in partitions.column_names:
            return []
        days = {row.get(PARTITION_COLUMN) for row in partitions.column("partition").to_pylist()}
        return sorted(d.isoformat() if hasattr(d, "isoformat") else str(d) for d in days if d is not None)

    def check_partitioning(self, dated: bool) -> None:
        if not dated:
            raise ConfigError(
                "output_format iceberg publishes dt= partitions of its tables: pass --date D, or run a backfill"
            )
        try:
            self.tables.catalog_properties  # noqa: B018 - the embedded catalog needs a local output
        except ValueError as e:
            raise ConfigError(f"setting 'catalog': {e}") from None

    def prepare(self, schemas: dict[str, pa.Schema], create: bool = True) -> None:
        try:
            self.day_commit().prepare(schemas, create)
        except IcebergSchemaError as e:
            raise OutputError(str(e)) from None

    def stored_schemas(self) -> dict[str, pa.Schema]:
        return self.tables.stored_schemas()

    def _reports_dir(self, partition: str, run_id: str | None = None) -> str:
        folder = storage.join(self.output, REPORTS_DIR, f"dt={partition}")
        return storage.join(folder, run_id) if run_id else folder

    def publish(self, partition, shards, facts, reports, fence) -> None:
        run_id = facts.run_id
        for name, data in reports.items():
            storage.write_atomically(storage.join(self._reports_dir(partition, run_id), name), data)
        rows = facts.rows
        properties = {
            "run-id": run_id,
            "model-version": facts.model_version,
            "rows-read": rows.read,
            "rows-scored": rows.scored,
            "rows-rejected": rows.rejected,
        }
        files = {kind: [s.path for s in shards if s.kind == kind] for kind in ("scores", "rejects")}

        def holds_the_day() -> bool:
            try:
                fence()
            except (lease.LeaseHeld, lease.LeaseError):
                return False
            return True

        fence()
        try:
            self.day_commit().publish(
                partition,
                files["scores"],
                files["rejects"],
                properties,
                before_commit=lambda kind: fence(),  # each table's commit attempt: loaded and planned
                may_clean=holds_the_day,
            )
        except (IcebergPublishError, IcebergSchemaError) as e:
            storage.delete_tree(self._reports_dir(partition, run_id))
            raise storage.StorageError(str(e)) from None
        except BaseException:
            storage.delete_tree(self._reports_dir(partition, run_id))
            raise
        listed = storage.list_paths(storage.join(self._reports_dir(partition), "*", "*"))
        others = [path for path in listed if path.rsplit("/", 2)[-2] != run_id]
        if others and holds_the_day():  # asked after the listing: a run that took the day wrote its reports after
            storage.delete(others)

    def check(self, partition: str, count_rows: bool = True) -> PartitionCheck:
        name = self.name(partition)
        nothing = self._nothing_to_read()
        if nothing:
            return PartitionCheck(name, False, nothing)
        try:
            complete, message = self.tables.verify(partition, check_files=count_rows)
        except OutputError as e:  # a catalog that cannot be opened (named) is not a published day
            return PartitionCheck(name, False, str(e))
        except Exception as e:
            return PartitionCheck(name, False, f"{name}: cannot read the tables ({type(e).__name__}: {e})")
        if not complete:
            return PartitionCheck(name, False, message)
        summary = day_facts(self.tables.reader.load_table(self.tables.table_names["scores"]), partition)
        facts = PartitionFacts(
            run_id=summary[SUMMARY_PREFIX + "run-id"],
            model_version=summary[SUMMARY_PREFIX + "model-version"],
            rows=RowCounts(*(int(summary[f"{SUMMARY_PREFIX}rows-{k}"]) for k in ("read", "scored", "rejected"))),
        )
        return PartitionCheck(name, True, message, facts)

    def published_summary(self, partition: str) -> dict | None:
        check = self.check(partition, count_rows=False)
        if not check.complete:
            return None
        folder = self._reports_dir(partition, check.manifest.run_id)
        return storage.read_json(storage.join(folder, self.summary_report))

    def previous_summary(self, partition: str) -> dict | None:
        summaries = storage.list_paths(storage.join(self.output, REPORTS_DIR, "dt=*", "*", self.summary_report))
        days = sorted({p.split("/dt=")[-1].split("/")[0] for p in summaries} - {partition})
        earlier = [d for d in days if d < partition]
        return self.published_summary(earlier[-1]) if earlier else None

    def published_version(self, partition: str) -> str | None:
        """Raises OutputError naming the catalog when it cannot be read (--skip-existing cannot tell what is done)."""
        if self._nothing_to_read():
            return None
        try:
            return self.tables.published_model_version(partition)
        except NoSuchOutput:
            return None
