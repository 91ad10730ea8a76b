"""Publishing a day's staged Parquet shards into Apache Iceberg tables: one snapshot per table replaces the day.

Interface (what the commit step calls):

- ``IcebergOutput(output, catalog=None, scores_table=..., rejects_table=...)``. ``catalog`` is a mapping of pyiceberg
  catalog properties, passed to ``pyiceberg.catalog.load_catalog`` unchanged (SQL on Postgres or SQLite, REST, Glue,
  Hive), except an optional ``name`` (default ``sentiment``): a SQL catalog keys its rows by it, so Spark's or
  Trino's catalog over the same database must carry the same name. Without it, a local ``output`` gets the embedded
  default: a SQLite SQL catalog at exactly ``OUTPUT/catalog.db`` with its warehouse at exactly ``OUTPUT/warehouse``.
  A non-local ``output`` (``s3://``, ``gs://``) without ``catalog`` is refused: SQLite cannot live in an object
  store, and a catalog file on the
  launcher's disk for a warehouse in a bucket would be a table nobody else can find.
- ``prepare({"scores": arrow_schema, "rejects": arrow_schema})``: creates the tables on first use (identity
  partition on ``dt``) or checks them; a schema that does not match fails naming the table and the column.
- ``publish(partition, scores_files, rejects_files, properties, on_step=None)``: moves the staged shards into
  ``TABLE_LOCATION/data/dt=D/`` (same names), then per table one commit of one ``overwrite`` snapshot that removes the
  day's current data files and adds the new ones (metadata only: footers are read, the data is not), rejects table
  first, scores table last. ``properties`` must hold ``run-id``, ``model-version``, ``rows-read``, ``rows-scored``,
  ``rows-rejected``; each snapshot's summary carries them as ``sentiment.<key>`` with ``sentiment.partition``.
- ``verify(partition) -> (complete, message)`` and ``published_model_version(partition) -> str | None``.

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
``published_model_version`` returns None, so ``--skip-existing`` rescores it. One publish per day at a time (the
lease), as for the Parquet output.
"""

from __future__ import annotations

import datetime as dt_module
import logging
import os
import random
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import ConfigError, OutputError
from pipeline.publish.publisher import ICEBERG, PartitionCheck, Publisher

_LOG = logging.getLogger(__name__)

PARTITION_COLUMN = "dt"
CATALOG_NAME = "sentiment"
SUMMARY_PREFIX = "sentiment."
REQUIRED_PROPERTIES = ("run-id", "model-version", "rows-read", "rows-scored", "rows-rejected")
DEFAULT_TABLES = {"scores": "sentiment.review_scores", "rejects": "sentiment.review_rejects"}
# Which property counts each table's rows.
ROWS_PROPERTY = {"scores": "rows-scored", "rejects": "rows-rejected"}
# The steps of publish, in order; tests fail the publish after each of them. A "-planned" step comes once per commit
# attempt (again after a conflict with another process).
STEPS = ("moved", "rejects-planned", "rejects-committed", "scores-planned", "scores-committed", "cleaned")
_EPOCH = dt_module.date(1970, 1, 1)
# Plans against concurrent writers before giving up: each is committed with pyiceberg's own retries (it rebases the
# snapshot on the refreshed table, commit.retry.num-retries times), then re-planned here from a fresh load.
COMMIT_ATTEMPTS = 10


class IcebergSchemaError(ValueError):
    """A run's columns do not match an existing table's; the message names the table and the column."""


class IcebergPublishError(RuntimeError):
    """A day that cannot be published as given (bad shard, wrong day, counts that do not add up); names what."""


def _iceberg_schema(arrow_schema: pa.Schema):
    """The Iceberg schema (fresh field ids) an Arrow schema stands for; string and large_string are one type."""
    from pyiceberg.catalog import Catalog

    return Catalog._convert_schema_if_needed(arrow_schema)


def _with_partition_column(arrow_schema: pa.Schema) -> pa.Schema:
    if PARTITION_COLUMN in arrow_schema.names:
        return arrow_schema
    return arrow_schema.append(pa.field(PARTITION_COLUMN, pa.date32()))


def check_schema(table_name: str, table_schema, arrow_schema: pa.Schema, where: str = "this run") -> None:
    """Raises IcebergSchemaError naming the table and the first column that differs between a table and a run."""
    given = {f.name: f.field_type for f in _iceberg_schema(_with_partition_column(arrow_schema)).fields}
    wanted = {f.name: f.field_type for f in table_schema.fields}
    for name, field_type in wanted.items():
        if name not in given:
            raise IcebergSchemaError(f"table {table_name}: column {name} ({field_type}) is missing in {where}")
        if given[name] != field_type:
            raise IcebergSchemaError(
                f"table {table_name}: column {name} is {given[name]} in {where}, {field_type} in the table"
            )
    extra = sorted(set(given) - set(wanted))
    if extra:
        raise IcebergSchemaError(f"table {table_name}: column {extra[0]} in {where} is not in the table")


def _partition_date(partition: str) -> dt_module.date:
    try:
        return dt_module.date.fromisoformat(partition)
    except ValueError:
        raise ValueError(f"partition {partition!r}: not a YYYY-MM-DD date") from None


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class IcebergOutput:
    """The two tables of the job's output in one catalog, and the per-day commit protocol over them."""

    def __init__(
        self,
        output: str,
        catalog: dict | None = None,
        scores_table: str = DEFAULT_TABLES["scores"],
        rejects_table: str = DEFAULT_TABLES["rejects"],
    ):
        self.output = output
        self.table_names = {"scores": scores_table, "rejects": rejects_table}
        self.catalog_properties = dict(catalog) if catalog else self.default_catalog(output)
        self._catalog = None

    @staticmethod
    def default_catalog(output: str) -> dict[str, str]:
        """The embedded catalog's properties: SQLite at OUTPUT/catalog.db, warehouse OUTPUT/warehouse."""
        if storage.is_remote(output) and not output.startswith("file://"):
            raise ValueError(
                f"output {output}: the embedded Iceberg catalog (SQLite) needs a local output; for an object store "
                f"set catalog: (pyiceberg catalog properties, e.g. type: sql with uri: postgresql+psycopg2://... or "
                f"sqlite:////local/catalog.db, warehouse: {output.rstrip('/')}/warehouse, s3.endpoint: ...)"
            )
        root = os.path.abspath(output.removeprefix("file://"))
        return {
            "type": "sql",
            "uri": f"sqlite:///{os.path.join(root, 'catalog.db')}",
            "warehouse": f"file://{os.path.join(root, 'warehouse')}",
        }

    @property
    def catalog(self):
        """The pyiceberg catalog, created on first use (the SQLite file and its tables too)."""
        if self._catalog is None:
            from pyiceberg.catalog import load_catalog

            uri = self.catalog_properties.get("uri", "")
            if uri.startswith("sqlite:///"):
                os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
            properties = dict(self.catalog_properties)
            # The catalog's name keys its rows in a SQL catalog: Spark/Trino readers must use the same one.
            name = properties.pop("name", CATALOG_NAME)
            self._catalog = _retry_racing_creation(lambda: load_catalog(name, **properties))
        return self._catalog

    # ------------------------------------------------------------------------------------------------ tables

    def prepare(self, schemas: dict[str, pa.Schema]) -> None:
        """Creates each table on first use from the run's Arrow schema (plus `dt`), or checks the existing one.

        schemas: {"scores": ..., "rejects": ...}, the writers' schemas (with or without `dt`). Meant for start-up,
        so a run whose columns do not match the tables stops before it scores anything.
        """
        for kind, schema in schemas.items():
            self._table(kind, schema)

    def _table(self, kind: str, arrow_schema: pa.Schema | None = None):
        """The table of one kind; created from arrow_schema when absent, else checked against it."""
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
                    _retry_racing_creation(lambda: self.catalog.create_namespace(namespace))
                except NamespaceAlreadyExistsError:
                    pass
            schema = _iceberg_schema(_with_partition_column(arrow_schema))
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
            check_schema(name, table.schema(), arrow_schema)
        return table

    def _data_dir(self, table, partition: str) -> str:
        return f"{table.location().rstrip('/')}/data/{PARTITION_COLUMN}={partition}"

    # ------------------------------------------------------------------------------------------------ publish

    def publish(
        self,
        partition: str,
        scores_files: list[str],
        rejects_files: list[str],
        properties: dict[str, str],
        on_step: Callable[[str], None] | None = None,
    ) -> dict:
        """Replaces one day in both tables with the staged shards; returns {"scores"|"rejects": snapshot_id}.

        Retrying after a crash is safe: a shard already moved is not moved again, and a table that already holds
        exactly this run's files for the day is not committed twice.
        """
        on_step = on_step or (lambda step: None)
        _partition_date(partition)
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
            tables[kind] = self._table(kind, schema)
            placed[kind] = self._move_in(kind, tables[kind], partition, staged[kind])
        on_step("moved")

        # Both tables' shards are checked before either table changes.
        added = {
            kind: self._new_data_files(
                kind, tables[kind], tables[kind].metadata, placed[kind], partition, int(properties[ROWS_PROPERTY[kind]])
            )
            for kind in ("rejects", "scores")
        }
        snapshots = {}
        for kind in ("rejects", "scores"):
            snapshots[kind] = self._commit_day(kind, partition, placed[kind], added[kind], summary, on_step)
            on_step(f"{kind}-committed")

        for kind in ("rejects", "scores"):
            self._remove_unreferenced(self.catalog.load_table(self.table_names[kind]), partition)
        on_step("cleaned")
        return snapshots

    def _fs(self, path: str) -> tuple[pafs.FileSystem, str]:
        """The Arrow filesystem the catalog's FileIO uses for a path (its credentials, its endpoint) and the path
        in it."""
        from pyiceberg.io.pyarrow import PyArrowFileIO

        io = PyArrowFileIO(self.catalog_properties)
        scheme, netloc, fs_path = io.parse_location(path)
        return _cached_fs(io, scheme, netloc), fs_path

    def _footer(self, path: str) -> pq.FileMetaData:
        fs, fs_path = self._fs(path)
        with fs.open_input_file(fs_path) as f:
            return pq.read_metadata(f)

    def _move_in(self, kind: str, table, partition: str, sources: list[str]) -> list[str]:
        """Moves staged shards into the table's folder for the day under the same names; returns the new paths of
        those that hold rows. Every shard's columns are checked before the first moves. A shard already moved (a
        retried publish) is taken where it is."""
        data_dir = self._data_dir(table, partition)
        moves, placed = [], []
        for source in sources:
            destination = f"{data_dir}/{_basename(source)}"
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

        name = self.table_names[kind]
        day_number = (_partition_date(partition) - _EPOCH).days  # how Iceberg stores a date partition value
        added = list(parquet_files_to_data_files(table.io, metadata, iter(paths)))
        for data_file in added:
            if data_file.partition[0] != day_number:
                held = _EPOCH + dt_module.timedelta(days=data_file.partition[0])
                raise IcebergPublishError(
                    f"{data_file.file_path}: its {PARTITION_COLUMN} column holds {held}, not {partition} (table {name})"
                )
        held = sum(f.record_count for f in added)
        if held != rows:
            raise IcebergPublishError(f"table {name}, {partition}: the shards hold {held} rows, the run says {rows}")
        return added

    def _commit_day(self, kind: str, partition: str, paths: list[str], added: list, summary: dict, on_step) -> int:
        """One overwrite snapshot that removes the day's data files and adds the run's; retried on conflicts with
        other processes, re-planned each time on the refreshed table. Returns the new snapshot's id.

        on_step(f"{kind}-planned") runs once per attempt, between planning on the loaded table and committing.
        """
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.expressions import EqualTo
        from pyiceberg.table import TableProperties

        name = self.table_names[kind]
        planned_on = None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = self.catalog.load_table(name)
            current = [task.file for task in table.scan(row_filter=EqualTo(PARTITION_COLUMN, partition)).plan_files()]
            if sorted(f.file_path for f in current) == sorted(paths) and _day_run(table, partition) == summary.get(
                f"{SUMMARY_PREFIX}run-id"
            ):
                return table.current_snapshot().snapshot_id  # this run's commit landed before (a retried publish)
            tx = table.transaction()
            if tx.table_metadata.name_mapping() is None:  # how readers map the shards' columns (no field ids)
                tx.set_properties(
                    **{TableProperties.DEFAULT_NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()}
                )
            layout = (tx.table_metadata.current_schema_id, tx.table_metadata.default_spec_id)
            if planned_on not in (None, layout):  # someone evolved the table meanwhile: statistics by the new ids
                rows = sum(f.record_count for f in added)
                added = self._new_data_files(kind, table, tx.table_metadata, paths, partition, rows)
            planned_on = layout
            with tx.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
                # Scopes the conflict check of a retried commit to this day: other days committed meanwhile are
                # rebased over; a change to this day by someone else (a publish without the lease) is refused.
                overwrite.delete_by_predicate(EqualTo(PARTITION_COLUMN, partition))
                for data_file in current:
                    overwrite.delete_data_file(data_file)
                for data_file in added:
                    overwrite.append_data_file(data_file)
            on_step(f"{kind}-planned")
            try:
                committed = tx.commit_transaction()
            except CommitFailedException as e:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                _LOG.info("table %s, %s: concurrent commit (%s); retrying on the refreshed table", name, partition, e)
                time.sleep(random.uniform(0.01, 0.05 * min(attempt, 10)))
                continue
            except ValidationException as e:
                raise IcebergPublishError(
                    f"table {name}, {partition}: another publish changed this day while this one committed ({e}); "
                    f"nothing of this run was committed to {name}"
                ) from e
            return committed.current_snapshot().snapshot_id
        raise AssertionError("unreachable")

    def _remove_unreferenced(self, table, partition: str) -> list[str]:
        """Deletes the files in the day's data folder that no snapshot references (a crashed run's)."""
        data_dir = self._data_dir(table, partition)
        fs, fs_dir = self._fs(data_dir)
        listed = fs.get_file_info(pafs.FileSelector(fs_dir, allow_not_found=True))
        present = {f"{data_dir}/{info.base_name}": info.path for info in listed if info.type == pafs.FileType.File}
        if not present:
            return []
        stale = sorted(set(present) - _referenced_files(table, partition))
        for path in stale:
            fs.delete_file(present[path])
        if stale:
            _LOG.info("table %s, %s: removed %d file(s) no snapshot references", table.name(), partition, len(stale))
        return stale

    # ------------------------------------------------------------------------------------------------ verify

    def verify(self, partition: str, check_files: bool = True) -> tuple[bool, str]:
        """Whether the current snapshots hold the day as its last publish wrote it: each table's rows for the day
        equal the counts in that publish's snapshot summary, both tables from the same run, scored + rejected =
        read, and (check_files) every data file there with its size."""
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.expressions import EqualTo

        _partition_date(partition)
        facts = {}
        for kind in ("scores", "rejects"):
            name = self.table_names[kind]
            try:
                table = self.catalog.load_table(name)
            except NoSuchTableError:
                return False, f"{partition}: table {name} does not exist: not published"
            summary = _day_summary(table, partition)
            if summary is None:
                return False, f"{partition}: table {name} has no snapshot for this day: not published"
            files = [t.file for t in table.scan(row_filter=EqualTo(PARTITION_COLUMN, partition)).plan_files()]
            rows = sum(f.record_count for f in files)
            want = int(summary[SUMMARY_PREFIX + ROWS_PROPERTY[kind]])
            if rows != want:
                return False, f"{partition}: table {name} holds {rows} rows for the day, its snapshot says {want}"
            if check_files:
                for data_file in files:
                    fs, fs_path = self._fs(data_file.file_path)
                    info = fs.get_file_info(fs_path)
                    if info.type != pafs.FileType.File:
                        return False, f"{partition}: table {name}: data file {data_file.file_path} is missing"
                    if info.size != data_file.file_size_in_bytes:
                        return False, (
                            f"{partition}: table {name}: data file {data_file.file_path} has {info.size} bytes, "
                            f"the table lists {data_file.file_size_in_bytes}"
                        )
            facts[kind] = (summary, len(files))
        (scores, n_scores), (rejects, n_rejects) = facts["scores"], facts["rejects"]
        run, other = scores[SUMMARY_PREFIX + "run-id"], rejects[SUMMARY_PREFIX + "run-id"]
        if run != other:
            return False, (
                f"{partition}: scores are from run {run}, rejects from run {other}: a publish stopped between the "
                f"two tables; rescore the day"
            )
        read, scored, rejected = (
            int(scores[SUMMARY_PREFIX + k]) for k in ("rows-read", "rows-scored", "rows-rejected")
        )
        if scored + rejected != read:
            return False, f"{partition}: snapshot says scored {scored} + rejected {rejected} != read {read}"
        return True, (
            f"{partition}: complete: {scored} scored + {rejected} rejected = {read} read in {n_scores + n_rejects} "
            f"file(s), run {run}, model {scores[SUMMARY_PREFIX + 'model-version']}"
        )

    def published_model_version(self, partition: str) -> str | None:
        """The model version the day's published rows were scored with, or None when the day is not complete."""
        complete, _ = self.verify(partition)
        if not complete:
            return None
        table = self.catalog.load_table(self.table_names["scores"])
        return _day_summary(table, partition)[SUMMARY_PREFIX + "model-version"]


def _day_summary(table, partition: str) -> dict | None:
    """The summary properties of the newest snapshot in the current snapshot's history that published the day."""
    metadata = table.metadata
    snapshot = table.current_snapshot()
    while snapshot is not None:
        properties = snapshot.summary.additional_properties if snapshot.summary else {}
        if properties.get(SUMMARY_PREFIX + "partition") == partition:
            return properties
        snapshot = metadata.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return None


def _day_run(table, partition: str) -> str | None:
    summary = _day_summary(table, partition)
    return summary.get(SUMMARY_PREFIX + "run-id") if summary else None


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


_FS_CACHE: dict = {}


def _cached_fs(io, scheme: str, netloc: str) -> pafs.FileSystem:
    key = (scheme, netloc, tuple(sorted((k, str(v)) for k, v in io.properties.items())))
    if key not in _FS_CACHE:
        _FS_CACHE[key] = io.fs_by_scheme(scheme, netloc)
    return _FS_CACHE[key]


def _exists(path: str, output: IcebergOutput) -> bool:
    fs, fs_path = output._fs(path)
    return fs.get_file_info(fs_path).type == pafs.FileType.File


def _retry_racing_creation(make: Callable, attempts: int = 5):
    """Runs make(); retried when another process creates the catalog's SQLite tables or rows at the same moment.

    A creation that lost the race fails on a constraint (IntegrityError) or a lock (OperationalError); the retry
    finds what the other process created (load_catalog uses it; create_namespace raises NamespaceAlreadyExistsError).
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts + 1):
        try:
            return make()
        except (OperationalError, IntegrityError):
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------------
# The Publisher for output_format: iceberg (pipeline/publish/publisher.py)

REPORTS_DIR = "reports"


class IcebergTables(Publisher):
    """Publishes each day into the Iceberg tables (IcebergOutput) and its reports into OUTPUT/reports/dt=D/RUN/.

    The reports of the run whose snapshot is current for a day are the day's reports: a publish writes them before
    its commit (so a crash leaves no summary without its rows), and removes other runs' report folders of that day
    after it. Picklable: the catalog is opened per process on first use.
    """

    partition_column = PARTITION_COLUMN

    def __init__(self, output: str, catalog: dict | None = None, table_names: dict | None = None):
        self.output = output
        self._catalog = dict(catalog) if catalog else None
        self._names = dict(table_names or DEFAULT_TABLES)
        self._tables: IcebergOutput | None = None

    def __getstate__(self):
        return {**self.__dict__, "_tables": None}

    @property
    def tables(self) -> IcebergOutput:
        if self._tables is None:
            self._tables = IcebergOutput(self.output, self._catalog, self._names["scores"], self._names["rejects"])
        return self._tables

    output_format = ICEBERG

    def name(self, partition: str) -> str:
        return f"{self._names['scores']} dt={partition}" if partition else self._names["scores"]

    def describe(self) -> str:
        where = self._catalog or IcebergOutput.default_catalog(self.output)
        catalog = where.get("uri") or where.get("type", "?")
        return (
            f"iceberg tables {self._names['scores']} and {self._names['rejects']} (one snapshot per table per day) "
            f"in catalog {catalog}, reports under {storage.join(self.output, REPORTS_DIR)}"
        )

    def partitions_found(self) -> list[str] | None:
        """The days the scores table holds; None when there is no such table (the embedded catalog's file is
        looked for first, so nothing is created where there is no output)."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if self._catalog is None:
            try:
                uri = IcebergOutput.default_catalog(self.output)["uri"]
            except ValueError:
                return None
            if not os.path.exists(uri.removeprefix("sqlite:///")):
                return None
        try:
            table = self.tables.catalog.load_table(self._names["scores"])
        except (NoSuchTableError, NoSuchNamespaceError):
            return None
        partitions = table.inspect.partitions()
        if "partition" not in partitions.column_names:
            return []
        days = {row.get(PARTITION_COLUMN) for row in partitions.column("partition").to_pylist()}
        return sorted(d.isoformat() if hasattr(d, "isoformat") else str(d) for d in days if d is not None)

    def check_layout(self, dated: bool) -> None:
        if not dated:
            raise ConfigError(
                "output_format iceberg publishes dt= partitions of its tables: pass --date D, or run a backfill"
            )
        try:
            self.tables.catalog_properties  # noqa: B018 - the embedded catalog needs a local output
        except ValueError as e:
            raise ConfigError(f"setting 'catalog': {e}") from None

    def prepare(self, schemas: dict[str, pa.Schema]) -> None:
        try:
            self.tables.prepare(schemas)
        except IcebergSchemaError as e:
            raise OutputError(str(e)) from None

    def _reports_dir(self, partition: str, run_id: str | None = None) -> str:
        folder = storage.join(self.output, REPORTS_DIR, f"dt={partition}")
        return storage.join(folder, run_id) if run_id else folder

    def publish(self, partition, shards, facts, reports, fence) -> None:
        run_id = facts["run_id"]
        for name, data in reports.items():
            storage.write_atomically(storage.join(self._reports_dir(partition, run_id), name), data)
        rows = facts["rows"]
        properties = {
            "run-id": run_id,
            "model-version": facts["model_version"],
            "rows-read": rows["read"],
            "rows-scored": rows["scored"],
            "rows-rejected": rows["rejected"],
        }
        files = {kind: [s["path"] for s in shards if s["kind"] == kind] for kind in ("scores", "rejects")}

        def fence_before_commit(step: str) -> None:
            if step == "moved":  # immediately before the first table commit
                fence()

        fence()
        try:
            self.tables.publish(partition, files["scores"], files["rejects"], properties, on_step=fence_before_commit)
        except (IcebergPublishError, IcebergSchemaError) as e:
            storage.delete_tree(self._reports_dir(partition, run_id))
            raise storage.StorageError(str(e)) from None
        except BaseException:
            storage.delete_tree(self._reports_dir(partition, run_id))
            raise
        for path in storage.list_paths(storage.join(self._reports_dir(partition), "*", "*")):
            if path.rsplit("/", 2)[-2] != run_id:
                storage.delete([path])

    def check(self, partition: str, count_rows: bool = True) -> PartitionCheck:
        name = self.name(partition)
        try:
            complete, message = self.tables.verify(partition, check_files=count_rows)
        except Exception as e:  # a catalog that cannot be opened is not a published day
            return PartitionCheck(name, False, f"{name}: cannot read the tables ({type(e).__name__}: {e})")
        if not complete:
            return PartitionCheck(name, False, message)
        summary = _day_summary(self.tables.catalog.load_table(self.tables.table_names["scores"]), partition)
        facts = {
            "run_id": summary[SUMMARY_PREFIX + "run-id"],
            "model_version": summary[SUMMARY_PREFIX + "model-version"],
            "rows": {k: int(summary[f"{SUMMARY_PREFIX}rows-{k}"]) for k in ("read", "scored", "rejected")},
        }
        return PartitionCheck(name, True, message, facts)

    def published_summary(self, partition: str) -> dict | None:
        check = self.check(partition, count_rows=False)
        if not check.complete:
            return None
        return storage.read_json(storage.join(self._reports_dir(partition, check.manifest["run_id"]), "summary.json"))

    def previous_summary(self, partition: str) -> dict | None:
        summaries = storage.list_paths(storage.join(self.output, REPORTS_DIR, "dt=*", "*", "summary.json"))
        days = sorted({p.split("/dt=")[-1].split("/")[0] for p in summaries} - {partition})
        earlier = [d for d in days if d < partition]
        return self.published_summary(earlier[-1]) if earlier else None

    def published_version(self, partition: str) -> str | None:
        return self.tables.published_model_version(partition)
