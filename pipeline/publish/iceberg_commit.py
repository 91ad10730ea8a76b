"""Publishing a day's staged Parquet shards into Apache Iceberg tables: one snapshot per table replaces the day.

Interface (what IcebergPublisher calls), split as pyiceberg splits Table from Transaction:

- ``OutputTables(output, catalog=None, scores_table=..., rejects_table=...)`` reads and inspects. ``catalog`` is a
  mapping of pyiceberg catalog properties, passed to ``pyiceberg.catalog.load_catalog`` unchanged (SQL on Postgres or
  SQLite, REST, Glue, Hive), except an optional ``name`` (default ``sentiment``): a SQL catalog keys its rows by it,
  so Spark's or Trino's catalog over the same database must carry the same name. Without it, a local ``output`` gets
  the embedded default: a SQLite SQL catalog at exactly ``OUTPUT/catalog.db`` with its warehouse at exactly
  ``OUTPUT/warehouse``. A non-local ``output`` (``s3://``, ``gs://``) without ``catalog`` is refused: SQLite cannot
  live in an object store, and a catalog file on the launcher's disk for a warehouse in a bucket would be a table
  nobody else can find. ``verify(partition) -> (complete, message)``, ``published_model_version(partition) -> str |
  None``, ``stored_schemas()``: read only, through ``reader`` (the catalog opened read-only: SQLite ``mode=ro``, no
  catalog tables created); ``catalog`` is the catalog opened to write, which refuses a missing or empty embedded
  ``catalog.db`` beside a warehouse that holds tables, and names one that is not SQLite (OutputError).
- ``DayCommit(tables, retention_days=None)`` changes them:
  ``prepare({"scores": arrow_schema, "rejects": arrow_schema}, create=True)`` creates the tables on first use
  (identity partition on ``dt``; non-nullable Arrow fields become required columns) or checks them; a schema that
  does not match fails naming the table and the column; create=False (a guessed schema) creates nothing.
  ``publish(partition, scores_files, rejects_files, properties, before_commit=None)`` moves the staged shards into
  ``TABLE_LOCATION/data/dt=D/`` (same names), then per table one commit (metadata only: footers are read, the data is
  not), rejects table first, scores table last: an ``append`` snapshot when the table holds no file of the day, else
  an ``overwrite`` that also removes the day's current files. ``properties`` must hold ``run-id``,
  ``model-version``, ``rows-read``, ``rows-scored``, ``rows-rejected``; each snapshot's summary carries them as
  ``sentiment.<key>`` with ``sentiment.partition``, and the same commit sets the table property
  ``sentiment.day.<partition>`` to them (with the snapshot id), which snapshot expiry keeps. With a retention, the
  publish then expires older snapshots (``expire_snapshots``).

What a staged shard must be: a Parquet file with the table's columns by name (any order; ``string`` or
``large_string``; int ids as ``int64``), a ``dt`` column of type ``date32`` holding the partition day in every row,
column statistics on (pyarrow's default), and no Parquet field ids (pyarrow writes none unless asked): the day is
read from ``dt``'s min/max statistics and checked against ``partition``. Shards with 0 rows are left where they are
and not added (they carry no statistics to place them and nothing to read).

Guarantees: a commit conflict with another process (another day committed to the same table meanwhile) is retried
on the refreshed table, re-planning which files the day holds, so concurrent days are neither lost nor doubled. A
crash before a table's commit leaves that table's previous snapshot current; the moved files of a crashed run are
referenced by no snapshot and are deleted by the next publish of that day, which never deletes a file any snapshot
(also an older one, for time travel) references. A crash between the two tables' commits leaves the rejects table
on the new run and the scores table on the old one: ``verify`` names that day incomplete (two run ids) and
``published_model_version`` returns None, so ``--skip-existing`` rescores it. Expiring snapshots (the retention,
or an operator's maintenance) un-publishes no day: its facts are the day's table property; a publish that planned
on a snapshot expired meanwhile re-plans.
One publish per table-day at a time: the lease (``IcebergPublisher.lease_scopes``), checked before each table's
commit and before the cleanup deletes anything, so a run that lost the day commits nothing more and never deletes
what the new holder moved in.
"""

from __future__ import annotations

import datetime as dt_module
import json
import logging
import random
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import failpoints
from pipeline.errors import JobError
from pipeline.publish.iceberg_compat import append_checked, iceberg_schema
from pipeline.publish.iceberg_tables import (
    DAY_PROPERTY_PREFIX,
    PARTITION_COLUMN,
    REQUIRED_PROPERTIES,
    ROWS_PROPERTY,
    SUMMARY_PREFIX,
    OutputTables,
    basename_of,
    check_schema,
    day_run,
    partition_date,
    retry_racing_creation,
    with_partition_column,
)

_LOG = logging.getLogger(__name__)

# Plans against concurrent writers before giving up: each is committed with pyiceberg's own retries (it rebases the
# snapshot on the refreshed table, commit.retry.num-retries times), then re-planned here from a fresh load.
# A loop, not tenacity (which retry_racing_creation uses): an attempt is a whole re-plan whose outcome decides the
# next (return early when this run's commit already landed, re-plan at once on an expired snapshot, back off only
# after a conflict, turn the last ValidationException into the day's own error), and the fence (before_commit) runs
# inside it; as tenacity callbacks each of those would sit apart from the attempt it belongs to.
COMMIT_ATTEMPTS = 10
# With a retention, the previous metadata files a table keeps (Iceberg's write.metadata.previous-versions-max, whose
# default this is): every commit writes a whole new metadata file (about 3 a night: rejects, scores, expiry), so a
# year of nights leaves ~2,000 files behind that only a hand rollback of the catalog pointer could use. Snapshots,
# and so time travel, live in the current file and are unaffected.
METADATA_FILES_KEPT = 100


class IcebergPublishError(JobError, RuntimeError):
    """A day that cannot be published as given (bad shard, wrong day, counts that do not add up); names what."""


class DayCommit:
    """Changes the job's tables (OutputTables): creates them, publishes a day by the commit protocol (the module's
    docstring), expires snapshots after it when a retention is set."""

    def __init__(
        self,
        tables: OutputTables,
        retention_days: float | None = None,
        clock: Callable[[], float] = time.time,
        metadata_files_kept: int = METADATA_FILES_KEPT,
    ):
        self.tables = tables
        # After each publish, snapshots older than this are expired (None: never); clock() is now, in seconds.
        self.retention_days = retention_days
        self._clock = clock
        # With a retention, each commit also deletes the table's metadata files older than the newest
        # metadata_files_kept (see _retention_properties).
        self.metadata_files_kept = metadata_files_kept

    # What the commit reads through its tables, as a pyiceberg Transaction reads through its Table.
    @property
    def output(self) -> str:
        return self.tables.output

    @property
    def catalog(self):
        return self.tables.catalog

    @property
    def table_names(self) -> dict[str, str]:
        return self.tables.table_names

    def _fs(self, path: str) -> tuple[pafs.FileSystem, str]:
        return self.tables._fs(path)

    def _footer(self, path: str) -> pq.FileMetaData:
        return self.tables._footer(path)

    def _data_dir(self, table, partition: str) -> str:
        return self.tables._data_dir(table, partition)

    def prepare(self, schemas: dict[str, pa.Schema], create: bool = True) -> None:
        """Creates each table on first use from the run's Arrow schema (plus `dt`), or checks the existing one.

        schemas: {"scores": ..., "rejects": ...}, the writers' schemas (with or without `dt`). Meant for start-up,
        so a run whose columns do not match the tables stops before it scores anything. create=False: the schemas
        are a guess (no input file behind them), so only existing tables are checked and none is created from them.
        """
        from pyiceberg.exceptions import NoSuchTableError

        for kind, schema in schemas.items():
            if create:
                self._table(kind, schema)
                continue
            try:
                check_schema(self.table_names[kind], self.catalog.load_table(self.table_names[kind]).schema(), schema)
            except NoSuchTableError:
                pass

    def _table(self, kind: str, arrow_schema: pa.Schema | None = None, where: str | None = None):
        """The table of one kind; created from arrow_schema when absent, else checked against it (`where` names
        what the schema is of in a message: a shard, or this run)."""
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
        from pyiceberg.partitioning import PartitionField, PartitionSpec
        from pyiceberg.transforms import IdentityTransform

        name = self.table_names[kind]
        try:
            table = self.catalog.load_table(name)
        except NoSuchTableError:
            if arrow_schema is None:
                raise
            namespace = tuple(name.split(".")[:-1])
            if namespace:
                try:  # pyiceberg checks, then inserts: an insert that loses a race fails, the retry sees it exists
                    retry_racing_creation(lambda: self.catalog.create_namespace(namespace))
                except NamespaceAlreadyExistsError:
                    pass
            schema = iceberg_schema(with_partition_column(arrow_schema))
            source = schema.find_field(PARTITION_COLUMN)
            spec = PartitionSpec(
                PartitionField(source_id=source.field_id, field_id=1000, transform=IdentityTransform(), name="dt")
            )
            try:
                table = self.catalog.create_table(name, schema=schema, partition_spec=spec)
                _LOG.info("created Iceberg table %s at %s", name, table.location())
            except TableAlreadyExistsError:  # another process created it first: use theirs, checked below
                table = self.catalog.load_table(name)
        if arrow_schema is not None:
            check_schema(name, table.schema(), arrow_schema, where=where or "this run")
        return table

    def _exists_table(self, kind: str) -> bool:
        return self.catalog.table_exists(self.table_names[kind])

    def _has_rows(self, staged: dict[str, list[str]]) -> bool:
        """Whether any staged shard holds a row: only rows fix a table's column types (a shard already moved by a
        retried publish sits in a table that exists)."""
        return any(self._footer(p).num_rows > 0 for paths in staged.values() for p in paths if _exists(p, self))

    def publish(
        self,
        partition: str,
        scores_files: list[str],
        rejects_files: list[str],
        properties: dict[str, str],
        before_commit: Callable[[str], None] | None = None,
        may_clean: Callable[[], bool] | None = None,
    ) -> dict:
        """Replaces one day in both tables with the staged shards; returns {"scores"|"rejects": snapshot_id}.

        Retrying after a crash is safe: a shard already moved is not moved again, and a table that already holds
        exactly this run's files for the day is not committed twice. before_commit(kind): called at each commit
        attempt of a table, planned on the loaded table and about to commit (the publisher's fence: when it raises,
        that table is not committed). may_clean: asked after the day's folder is listed and before any unreferenced
        file in it is deleted (whether this run still holds the day's lease): when it says no, nothing is deleted,
        since another run may have moved files in that it has yet to commit. Each step passes a failpoint
        (failpoints.ICEBERG_PUBLISH).
        """
        partition_date(partition)
        missing = [key for key in REQUIRED_PROPERTIES if key not in properties]
        if missing:
            raise ValueError(f"publish {partition}: properties lack {', '.join(missing)}")
        summary = {f"{SUMMARY_PREFIX}{k}": str(v) for k, v in properties.items()}
        summary[f"{SUMMARY_PREFIX}partition"] = partition

        staged = {"scores": list(scores_files), "rejects": list(rejects_files)}
        tables, placed = {}, {}
        for kind in ("rejects", "scores"):
            first = next((p for p in staged[kind] if _exists(p, self)), None)
            schema = self._footer(first).schema.to_arrow_schema() if first else None
            if not self._exists_table(kind) and not self._has_rows(staged):
                raise IcebergPublishError(
                    f"table {self.table_names[kind]} does not exist yet and {partition} has no rows to take its "
                    f"column types from: not published (the first day with rows creates the tables, or state the "
                    f"kinds: setting column_kinds; score this day again after that)"
                )
            tables[kind] = self._table(kind, schema, where=first)
            placed[kind] = self._move_in(kind, tables[kind], partition, staged[kind])
        failpoints.hit("iceberg.moved")

        # Both tables' shards are checked before either table changes.
        added = {
            kind: self._new_data_files(
                kind, tables[kind], tables[kind].metadata, placed[kind], partition, int(properties[ROWS_PROPERTY[kind]])
            )
            for kind in ("rejects", "scores")
        }
        snapshots = {}
        for kind in ("rejects", "scores"):
            snapshots[kind] = self._commit_day(kind, partition, placed[kind], added[kind], summary, before_commit)
            failpoints.hit(f"iceberg.{kind}-committed")

        for kind in ("rejects", "scores"):
            self._remove_unreferenced(self.catalog.load_table(self.table_names[kind]), partition, may_clean)
        failpoints.hit("iceberg.cleaned")
        if self.retention_days is not None:
            cutoff = dt_module.datetime.fromtimestamp(self._clock(), dt_module.UTC)
            self.expire_snapshots(cutoff - dt_module.timedelta(days=self.retention_days))
        return snapshots

    def expire_snapshots(self, older_than: dt_module.datetime) -> dict[str, int]:
        """Expires each table's snapshots taken before older_than, except the one that was current then (so time
        travel to any moment since keeps working), the current one and branch or tag heads; then deletes the data
        files that only the expired snapshots referenced. Returns {kind: snapshots expired}.

        Best effort, after the day is published: a failure (a concurrent commit, a file that cannot be deleted) is
        logged, and the next publish expires what is left. The days' facts stay (table properties).
        """
        expired = {}
        for kind, name in self.table_names.items():
            try:
                expired[kind] = self._expire(self.catalog.load_table(name), older_than)
            except Exception as e:  # maintenance must not fail a published day
                _LOG.warning("table %s: snapshots not expired this time (%s: %s)", name, type(e).__name__, e)
                expired[kind] = 0
        return expired

    def _expire(self, table, older_than: dt_module.datetime) -> int:
        metadata = table.metadata
        cutoff_ms = int(older_than.timestamp() * 1000)
        history, snapshot = [], table.current_snapshot()
        while snapshot is not None:
            history.append(snapshot)
            snapshot = metadata.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
        current_at_cutoff = next((s.snapshot_id for s in history if s.timestamp_ms < cutoff_ms), None)
        keep = {current_at_cutoff} | {ref.snapshot_id for ref in metadata.refs.values()}
        expire = {s.snapshot_id for s in metadata.snapshots if s.timestamp_ms < cutoff_ms} - keep
        if not expire:
            return 0
        unreferenced = _files_only_in(
            table,
            expired=[s for s in metadata.snapshots if s.snapshot_id in expire],
            kept=[s for s in metadata.snapshots if s.snapshot_id not in expire],
        )
        table.maintenance.expire_snapshots().by_ids(sorted(expire)).commit()
        _LOG.info("table %s: expired %d snapshot(s) taken before %s", table.name(), len(expire), older_than)
        for path in sorted(unreferenced):
            fs, fs_path = self._fs(path)
            if fs.get_file_info(fs_path).type == pafs.FileType.File:  # a day's publish may have removed it already
                fs.delete_file(fs_path)
        return len(expire)

    def _move_in(self, kind: str, table, partition: str, sources: list[str]) -> list[str]:
        """Moves staged shards into the table's folder for the day under the same names; returns the new paths of
        those that hold rows. Every shard's columns are checked before the first moves. A shard already moved (a
        retried publish) is taken where it is."""
        data_dir = self._data_dir(table, partition)
        moves, placed = [], []
        for source in sources:
            destination = f"{data_dir}/{basename_of(source)}"
            if _exists(source, self):
                footer = self._footer(source)
                check_schema(self.table_names[kind], table.schema(), footer.schema.to_arrow_schema(), where=source)
                if footer.num_rows == 0:
                    continue
                moves.append((source, destination))
            elif not _exists(destination, self):
                raise FileNotFoundError(f"{source}: staged shard is gone and was not published")
            placed.append(destination)
        for source, destination in moves:
            self._move(source, destination)
        return placed

    def _move(self, source: str, destination: str) -> None:
        source_fs, source_path = self._fs(source)
        target_fs, target_path = self._fs(destination)
        if isinstance(target_fs, pafs.LocalFileSystem):
            target_fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
        if type(source_fs) is type(target_fs) and (
            isinstance(target_fs, pafs.LocalFileSystem) or source_fs.equals(target_fs)
        ):
            try:
                source_fs.move(source_path, target_path)  # a rename on disk; copy + delete on object stores
                return
            except OSError:
                if not isinstance(source_fs, pafs.LocalFileSystem):
                    raise  # on disk: another device, copy below
        pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)
        source_fs.delete_file(source_path)

    def _new_data_files(self, kind: str, table, metadata, paths: list[str], partition: str, rows: int) -> list:
        """The DataFile entries (footer statistics, the day from `dt`) of a run's moved shards, checked: each holds
        the partition day only, and together they hold the rows the run counted."""
        from pyiceberg.io.pyarrow import parquet_files_to_data_files
        from pyiceberg.utils.datetime import date_to_days, days_to_date

        name = self.table_names[kind]
        day_number = date_to_days(partition_date(partition))  # how Iceberg stores a date partition value
        added = list(parquet_files_to_data_files(table.io, metadata, iter(paths)))
        for data_file in added:
            if data_file.partition[0] != day_number:
                held = days_to_date(data_file.partition[0])
                raise IcebergPublishError(
                    f"{data_file.file_path}: its {PARTITION_COLUMN} column holds {held}, not {partition} (table {name})"
                )
        held = sum(f.record_count for f in added)
        if held != rows:
            raise IcebergPublishError(f"table {name}, {partition}: the shards hold {held} rows, the run says {rows}")
        return added

    def _commit_day(
        self, kind: str, partition: str, paths: list[str], added: list, summary: dict, before_commit
    ) -> int:
        """One snapshot that adds the run's data files for the day: an append when the table holds none of the day,
        else an overwrite that also removes the day's current ones; retried on conflicts with other processes,
        re-planned each time on the refreshed table. Returns the new snapshot's id.

        before_commit(kind) runs once per attempt, between planning on the loaded table and committing.
        """
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.expressions import EqualTo
        from pyiceberg.table import TableProperties

        name = self.table_names[kind]
        planned_on = None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = self.catalog.load_table(name)
            current = [task.file for task in table.scan(row_filter=EqualTo(PARTITION_COLUMN, partition)).plan_files()]
            if sorted(f.file_path for f in current) == sorted(paths) and day_run(table, partition) == summary.get(
                f"{SUMMARY_PREFIX}run-id"
            ):
                return table.current_snapshot().snapshot_id  # this run's commit landed before (a retried publish)
            started_on = table.metadata.current_snapshot_id  # (pyiceberg's retries refresh `table` in place)
            tx = table.transaction()
            if tx.table_metadata.name_mapping() is None:  # how readers map the shards' columns (no field ids)
                tx.set_properties(
                    **{TableProperties.DEFAULT_NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()}
                )
            retention = self._retention_properties(tx.table_metadata.properties)
            if retention:
                tx.set_properties(**retention)
            layout = (tx.table_metadata.current_schema_id, tx.table_metadata.default_spec_id)
            if planned_on not in (None, layout):  # someone evolved the table meanwhile: statistics by the new ids
                rows = sum(f.record_count for f in added)
                added = self._new_data_files(kind, table, tx.table_metadata, paths, partition, rows)
            planned_on = layout
            # A day the table does not hold yet only adds files: an `append` snapshot, which incremental readers
            # (Spark streaming, incremental append scans) take; a rescore replaces files: an `overwrite`. Either
            # way the day's filter scopes the conflict check of a retried commit: other days committed meanwhile
            # are rebased over; a change to this day by someone else (a publish without the lease) is refused.
            day = EqualTo(PARTITION_COLUMN, partition)
            if current:
                update = tx.update_snapshot(snapshot_properties=summary).overwrite()
                update.delete_by_predicate(day)
            else:
                update = append_checked(table, tx, summary, day)
            with update:
                for data_file in current:
                    update.delete_data_file(data_file)
                for data_file in added:
                    update.append_data_file(data_file)
            # The day's facts, in the same commit as its rows: they outlive the snapshot (expiry removes snapshots,
            # never properties). The snapshot id tells a rollback past this commit (verify then walks the history).
            tx.set_properties(**{DAY_PROPERTY_PREFIX + partition: _day_property(summary, tx.table_metadata)})
            if before_commit is not None:
                before_commit(kind)
            failpoints.hit(f"iceberg.{kind}-planned")
            try:
                committed = tx.commit_transaction()
            except CommitFailedException as e:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                _LOG.info("table %s, %s: concurrent commit (%s); retrying on the refreshed table", name, partition, e)
                time.sleep(random.uniform(0.01, 0.05 * min(attempt, 10)))
                continue
            except ValidationException as e:
                expired_meanwhile = self.catalog.load_table(name).snapshot_by_id(started_on) is None
                if started_on is not None and expired_meanwhile and attempt < COMMIT_ATTEMPTS:
                    # Not a change to this day: the snapshot this commit planned on was expired meanwhile (another
                    # process's retention, after committing on top of it), so pyiceberg cannot check what changed
                    # since. Re-planned on the refreshed table, which checks this day afresh.
                    _LOG.info("table %s, %s: planned on a snapshot expired meanwhile; re-planning", name, partition)
                    continue
                raise IcebergPublishError(
                    f"table {name}, {partition}: another publish changed this day while this one committed ({e}); "
                    f"nothing of this run was committed to {name}"
                ) from e
            return committed.current_snapshot().snapshot_id
        raise AssertionError("unreachable")

    def _retention_properties(self, properties: dict[str, str]) -> dict[str, str]:
        """The table properties a retention sets, where the table lacks them: pyiceberg (as Iceberg's Java writer)
        then deletes, after each commit, the metadata files older than the newest metadata_files_kept. {} without a
        retention: an output that expires nothing deletes no metadata either."""
        from pyiceberg.table import TableProperties

        if self.retention_days is None:
            return {}
        wanted = {
            TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED: "true",
            TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: str(self.metadata_files_kept),
        }
        return {key: value for key, value in wanted.items() if properties.get(key) != value}

    def _remove_unreferenced(self, table, partition: str, may_clean: Callable[[], bool] | None = None) -> list[str]:
        """Deletes the files in the day's data folder that no snapshot references (a crashed run's), unless
        may_clean(), asked after the listing, says another run may be publishing the day (see publish)."""
        data_dir = self._data_dir(table, partition)
        fs, fs_dir = self._fs(data_dir)
        listed = fs.get_file_info(pafs.FileSelector(fs_dir, allow_not_found=True))
        present = {f"{data_dir}/{info.base_name}": info.path for info in listed if info.type == pafs.FileType.File}
        if not present:
            return []
        stale = sorted(set(present) - _referenced_files(table, partition))
        # Asked after the listing: a run that moved files in took the lease before, so it is seen here.
        if stale and may_clean is not None and not may_clean():
            _LOG.info("table %s, %s: left %d unreferenced file(s) to the run that holds the day", table.name(),
                      partition, len(stale))  # fmt: skip
            return []
        for path in stale:
            fs.delete_file(present[path])
        if stale:
            _LOG.info("table %s, %s: removed %d file(s) no snapshot references", table.name(), partition, len(stale))
        return stale


def _day_property(summary: dict[str, str], metadata) -> str:
    """The table property value that records a day's facts: the publish's summary properties (without the prefix)
    and the id of the snapshot the commit makes (pyiceberg keeps it across its commit retries)."""
    facts = {key.removeprefix(SUMMARY_PREFIX): value for key, value in summary.items()}
    facts["snapshot-id"] = str(metadata.current_snapshot().snapshot_id)
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))


def _files_only_in(table, expired: list, kept: list) -> set[str]:
    """The data files the expired snapshots reference and the kept ones do not (a reference also counts as a deleted
    entry: a changelog read of a kept snapshot reads the files it removed).

    Reads the manifest list of every snapshot, but manifests only where needed: those no kept snapshot lists, and of
    the kept ones those whose partition bounds hold a day of such a file. So an expiry reads about what it expires,
    not the table's whole history (every day's append adds a manifest that later snapshots keep listing)."""
    from pyiceberg.expressions import EqualTo, Or
    from pyiceberg.expressions.visitors import inclusive_projection, manifest_evaluator
    from pyiceberg.utils.datetime import days_to_date

    io = table.io
    kept_manifests = {m.manifest_path: m for snapshot in kept for m in snapshot.manifests(io)}
    candidates, seen = {}, set()
    for snapshot in expired:
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in kept_manifests or manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                candidates[entry.data_file.file_path] = entry.data_file.partition[0]
    if not candidates:
        return set()
    days = sorted({days_to_date(day) for day in candidates.values()})
    row_filter = EqualTo(PARTITION_COLUMN, days[0].isoformat())
    for day in days[1:]:
        row_filter = Or(row_filter, EqualTo(PARTITION_COLUMN, day.isoformat()))
    schema, specs, evaluators = table.schema(), table.specs(), {}
    for manifest in kept_manifests.values():
        spec_id = manifest.partition_spec_id
        if spec_id not in evaluators:
            spec = specs[spec_id]
            evaluators[spec_id] = manifest_evaluator(spec, schema, inclusive_projection(schema, spec)(row_filter))
        if evaluators[spec_id](manifest):
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                candidates.pop(entry.data_file.file_path, None)
    return set(candidates)


def _referenced_files(table, partition: str) -> set[str]:
    """Every data file path of the day that any snapshot of the table references (also deleted entries: older
    snapshots read them). Manifests whose partition bounds exclude the day are skipped unread."""
    from pyiceberg.expressions import EqualTo
    from pyiceberg.expressions.visitors import inclusive_projection, manifest_evaluator

    io, schema, specs = table.io, table.schema(), table.specs()
    row_filter = EqualTo(PARTITION_COLUMN, partition)
    evaluators = {}
    seen_manifests, paths = set(), set()
    for snapshot in table.metadata.snapshots:
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            spec_id = manifest.partition_spec_id
            if spec_id not in evaluators:
                spec = specs[spec_id]
                evaluators[spec_id] = manifest_evaluator(spec, schema, inclusive_projection(schema, spec)(row_filter))
            if not evaluators[spec_id](manifest):
                continue
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                paths.add(entry.data_file.file_path)
    return paths


def _exists(path: str, output: OutputTables | DayCommit) -> bool:
    fs, fs_path = output._fs(path)
    return fs.get_file_info(fs_path).type == pafs.FileType.File
