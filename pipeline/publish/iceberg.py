"""Publishing a day's staged Parquet shards into Apache Iceberg tables: one snapshot per table replaces the day.

Interface (what the commit step calls, through IcebergPublisher), split as pyiceberg splits Table from Transaction:

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
- ``OutputTables.day_commit(retention_days=None) -> DayCommit`` changes:
  ``prepare({"scores": arrow_schema, "rejects": arrow_schema}, create=True)`` creates the tables on first use
  (identity partition on ``dt``; non-nullable Arrow fields become required columns) or checks them; a schema that
  does not match fails naming the table and the column; create=False (a guessed schema) creates nothing.
  ``publish(partition, scores_files, rejects_files, properties, on_step=None)`` moves the staged shards into
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

import contextlib
import datetime as dt_module
import glob
import json
import logging
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import ConfigError, JobError, OutputError
from pipeline.publish import lease
from pipeline.publish.iceberg_compat import append_checked, iceberg_schema
from pipeline.publish.publisher import ICEBERG, LeaseScope, OutputDataset, PartitionCheck, Publisher, stop_here_if_asked
from transforms.schema import DETAIL, MODEL_VERSION, REASON, SCORE

_LOG = logging.getLogger(__name__)

PARTITION_COLUMN = "dt"
CATALOG_NAME = "sentiment"
SUMMARY_PREFIX = "sentiment."
# A table property per published day, `sentiment.day.YYYY-MM-DD`: that day's facts (JSON), set by its commit.
DAY_PROPERTY_PREFIX = "sentiment.day."
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


class IcebergSchemaError(JobError, ValueError):
    """A run's columns do not match an existing table's; the message names the table and the column."""


class IcebergPublishError(JobError, RuntimeError):
    """A day that cannot be published as given (bad shard, wrong day, counts that do not add up); names what."""


def _with_partition_column(arrow_schema: pa.Schema) -> pa.Schema:
    if PARTITION_COLUMN in arrow_schema.names:
        return arrow_schema
    return arrow_schema.append(pa.field(PARTITION_COLUMN, pa.date32()))


def check_schema(table_name: str, table_schema, arrow_schema: pa.Schema, where: str = "this run") -> None:
    """Raises IcebergSchemaError naming the table and the first column that differs between a table and a run."""
    given = {f.name: f for f in iceberg_schema(_with_partition_column(arrow_schema)).fields}
    wanted = {f.name: f for f in table_schema.fields}
    for name, field in wanted.items():
        if name not in given:
            raise IcebergSchemaError(f"table {table_name}: column {name} ({field.field_type}) is missing in {where}")
        if given[name].field_type != field.field_type:
            raise IcebergSchemaError(
                f"table {table_name}: column {name} is {given[name].field_type} in {where}, {field.field_type} in "
                f"the table"
            )
        if field.required and not given[name].required:  # a required column in a run is fine in an optional one
            raise IcebergSchemaError(
                f"table {table_name}: column {name} is optional in {where}, required in the table (it never holds "
                f"nulls)"
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


class NoSuchOutput(OutputError):
    """Inspection found no catalog where the output's embedded one would be: nothing was published there."""


CATALOG_FILE, WAREHOUSE_DIR = "catalog.db", "warehouse"


def sqlite_url(path: str, read_only: bool = False) -> str:
    """The SQLAlchemy URL of a SQLite file, written as an SQLite URI filename quoted twice (SQLAlchemy decodes the
    URL once, SQLite the URI once), so a `#`, `?` or `%` in the path stays part of it instead of ending it (a SQLite
    file at the path before the `?`). read_only opens with mode=ro: the file is never created or written."""
    quoted = urllib.parse.quote(urllib.parse.quote(os.path.abspath(path)))
    return f"sqlite:///file:{quoted}?{'mode=ro&' if read_only else ''}uri=true"


def warehouse_location(path: str) -> str:
    """file://PATH, or the bare absolute path when PATH holds a character a URI reads otherwise (`#`, `?`, `%`):
    pyiceberg splits a location with urlparse and never decodes it, so neither the URI nor its quoted form names the
    folder (tables would land at the path before the `#`); a location without a scheme it takes verbatim."""
    path = os.path.abspath(path)
    return path if any(c in path for c in "#?%") else f"file://{path}"


def _read_only(properties: dict) -> dict:
    """Catalog properties that open the same catalog for reading only: a SQL catalog creates no tables of its own
    (init_catalog_tables), a SQLite file is opened with mode=ro. Other catalog types create nothing when loaded."""
    properties = dict(properties)
    if properties.get("type", "sql") != "sql" or "uri" not in properties:
        return properties
    properties["init_catalog_tables"] = "false"
    from sqlalchemy import make_url

    url = make_url(properties["uri"])
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        if url.database.startswith("file:"):
            properties["uri"] = url.update_query_dict({"mode": "ro", "uri": "true"}).render_as_string(False)
        else:
            properties["uri"] = sqlite_url(url.database, read_only=True)
    return properties


def catalog_holds_tables(path: str) -> bool:
    """Whether an embedded catalog file holds pyiceberg's catalog tables, read with mode=ro (nothing is created);
    False when the file is missing or empty. Raises OutputError naming the file when it is not SQLite."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'iceberg_tables'").fetchone()[0] > 0
    except sqlite3.DatabaseError as e:
        raise OutputError(f"{path}: not a readable Iceberg catalog ({e})") from None


def warehouse_holds_tables(path: str) -> bool:
    """Whether a local warehouse folder holds Iceberg table metadata."""
    pattern = os.path.join(glob.escape(path), "**", "metadata", "*.metadata.json")
    return next(glob.iglob(pattern, recursive=True), None) is not None


class OutputTables:
    """The job's two tables (scores, rejects) in one catalog, read and inspected: a day's facts, verify, the published
    model version, the tables' schemas. Changes go through a DayCommit (day_commit()), as pyiceberg's Table reads and
    its Transaction changes."""

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
        # The embedded catalog's file and warehouse folder (None with a catalog: setting).
        root = None if catalog else os.path.abspath(output.removeprefix("file://"))
        self.catalog_file = os.path.join(root, CATALOG_FILE) if root else None
        self.warehouse_dir = os.path.join(root, WAREHOUSE_DIR) if root else None
        self._catalog = None
        self._reader = None

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
            "uri": sqlite_url(os.path.join(root, CATALOG_FILE)),
            "warehouse": warehouse_location(os.path.join(root, WAREHOUSE_DIR)),
        }

    def _where(self) -> str:
        """The catalog as messages name it: the embedded file, or the configured uri (no password) or type."""
        if self.catalog_file:
            return self.catalog_file
        uri = self.catalog_properties.get("uri")
        if uri and "://" in uri:
            from sqlalchemy import make_url

            try:
                return make_url(uri).render_as_string(hide_password=True)
            except Exception:
                return uri.split("://", 1)[0] + "://..."
        return f"catalog {self.catalog_properties.get('name', CATALOG_NAME)}"

    def identity(self) -> str:
        """Where the tables' names are defined, for lineage: the embedded catalog by its warehouse (it lives beside
        it, as a Hadoop catalog is its warehouse), a configured one by its uri (no password), else its warehouse."""
        if self.catalog_file:
            return self.catalog_properties["warehouse"]
        if "uri" in self.catalog_properties:
            return self._where()
        return self.catalog_properties.get("warehouse") or self._where()

    def _open(self, properties: dict):
        from pyiceberg.catalog import load_catalog
        from sqlalchemy.exc import DatabaseError

        properties = dict(properties)
        # The catalog's name keys its rows in a SQL catalog: Spark/Trino readers must use the same one.
        name = properties.pop("name", CATALOG_NAME)
        try:
            return _retry_racing_creation(lambda: load_catalog(name, **properties))
        except DatabaseError as e:
            raise OutputError(f"{self._where()}: not a readable Iceberg catalog ({e.orig or e})") from None

    @property
    def catalog(self):
        """The pyiceberg catalog to write, opened on first use; the embedded one (its SQLite file and tables) is
        created then, unless its warehouse already holds tables (a lost or emptied catalog.db: a new catalog would
        start new tables over them, and earlier days would vanish for readers)."""
        if self._catalog is None:
            if self.catalog_file:
                if not catalog_holds_tables(self.catalog_file) and warehouse_holds_tables(self.warehouse_dir):
                    state = "is empty" if os.path.exists(self.catalog_file) else "is missing"
                    raise OutputError(
                        f"{self.catalog_file} {state} but {self.warehouse_dir} holds Iceberg tables: a new catalog "
                        f"would start new tables over them; restore {CATALOG_FILE} from a backup, or choose another "
                        f"output"
                    )
                os.makedirs(os.path.dirname(self.catalog_file), exist_ok=True)
            elif self.catalog_properties.get("uri", "").startswith("sqlite:///"):
                # A configured SQLite file is created where it is named, its folder too (to write only: the reader
                # creates nothing).
                folder = os.path.dirname(self.catalog_properties["uri"].removeprefix("sqlite:///").split("?")[0])
                os.makedirs(folder or ".", exist_ok=True)
            self._catalog = self._open(self.catalog_properties)
        return self._catalog

    @property
    def reader(self):
        """The pyiceberg catalog to read, opened on first use without creating anything (see _read_only)."""
        if self._reader is None:
            if self.catalog_file and not catalog_holds_tables(self.catalog_file):
                raise NoSuchOutput(f"{self.output}: no such output (no Iceberg catalog at {self.catalog_file})")
            self._reader = self._open(_read_only(self.catalog_properties))
        return self._reader

    def stored_schemas(self) -> dict[str, pa.Schema]:
        """The Arrow schemas of the tables that exist (without `dt`)."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            reader = self.reader
        except NoSuchOutput:
            return {}
        schemas = {}
        for kind, name in self.table_names.items():
            try:
                schema = reader.load_table(name).schema().as_arrow()
            except NoSuchTableError:
                continue
            schemas[kind] = schema.remove(schema.get_field_index(PARTITION_COLUMN))
        return schemas

    def _data_dir(self, table, partition: str) -> str:
        return f"{table.location().rstrip('/')}/data/{PARTITION_COLUMN}={partition}"

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

    def verify(self, partition: str, check_files: bool = True) -> tuple[bool, str]:
        """Whether the current snapshots hold the day as its last publish wrote it: each table's rows for the day
        equal the counts of that publish (its facts: the day's table property, which outlives its snapshot), both
        tables from the same run, scored + rejected = read, and (check_files) every data file there with its size.
        Reads only (the reader catalog)."""
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.expressions import EqualTo

        _partition_date(partition)
        try:
            reader = self.reader
        except NoSuchOutput as e:
            return False, str(e)
        facts = {}
        for kind in ("scores", "rejects"):
            name = self.table_names[kind]
            try:
                table = reader.load_table(name)
            except NoSuchTableError:
                return False, f"{partition}: table {name} does not exist: not published"
            summary = _day_facts(table, partition)
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
        table = self.reader.load_table(self.table_names["scores"])
        return _day_facts(table, partition)[SUMMARY_PREFIX + "model-version"]

    def day_commit(self, retention_days: float | None = None, clock: Callable[[], float] = time.time) -> DayCommit:
        """What changes these tables: creates them, publishes a day, expires snapshots."""
        return DayCommit(self, retention_days, clock)


class DayCommit:
    """Changes the job's tables (OutputTables): creates them, publishes a day by the commit protocol (the module's
    docstring), expires snapshots after it when a retention is set."""

    def __init__(
        self, tables: OutputTables, retention_days: float | None = None, clock: Callable[[], float] = time.time
    ):
        self.tables = tables
        # After each publish, snapshots older than this are expired (None: never); clock() is now, in seconds.
        self.retention_days = retention_days
        self._clock = clock

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
                    _retry_racing_creation(lambda: self.catalog.create_namespace(namespace))
                except NamespaceAlreadyExistsError:
                    pass
            schema = iceberg_schema(_with_partition_column(arrow_schema))
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
        on_step: Callable[[str], None] | None = None,
        may_clean: Callable[[], bool] | None = None,
    ) -> dict:
        """Replaces one day in both tables with the staged shards; returns {"scores"|"rejects": snapshot_id}.

        Retrying after a crash is safe: a shard already moved is not moved again, and a table that already holds
        exactly this run's files for the day is not committed twice. may_clean: asked after the day's folder is
        listed and before any unreferenced file in it is deleted (whether this run still holds the day's lease):
        when it says no, nothing is deleted, since another run may have moved files in that it has yet to commit.
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
            if not self._exists_table(kind) and not self._has_rows(staged):
                raise IcebergPublishError(
                    f"table {self.table_names[kind]} does not exist yet and {partition} has no rows to take its "
                    f"column types from: not published (the first day with rows creates the tables, or state the "
                    f"kinds: setting column_kinds; score this day again after that)"
                )
            tables[kind] = self._table(kind, schema, where=first)
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
            self._remove_unreferenced(self.catalog.load_table(self.table_names[kind]), partition, may_clean)
        on_step("cleaned")
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
        """One snapshot that adds the run's data files for the day: an append when the table holds none of the day,
        else an overwrite that also removes the day's current ones; retried on conflicts with other processes,
        re-planned each time on the refreshed table. Returns the new snapshot's id.

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
            started_on = table.metadata.current_snapshot_id  # (pyiceberg's retries refresh `table` in place)
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


def _day_facts(table, partition: str) -> dict | None:
    """The facts of the publish whose rows the table holds for the day, as summary properties (`sentiment.` keys),
    or None when the day is not published.

    From the table property the publish set in its own commit, which snapshot expiry keeps; except when the
    snapshot it names is still in the table but no longer in the current snapshot's history (a rollback undid that
    commit): then from the newest snapshot of that history that published the day. Tables published before the
    property existed are read from the history too."""
    recorded = table.properties.get(DAY_PROPERTY_PREFIX + partition)
    if recorded:
        facts = json.loads(recorded)
        snapshot_id = int(facts.pop("snapshot-id"))
        if table.metadata.snapshot_by_id(snapshot_id) is None or _in_history(table, snapshot_id):
            return {SUMMARY_PREFIX + key: value for key, value in facts.items()}
    return _day_summary(table, partition)


def _in_history(table, snapshot_id: int) -> bool:
    """Whether the snapshot is the current one or one of its ancestors."""
    metadata, snapshot = table.metadata, table.current_snapshot()
    while snapshot is not None:
        if snapshot.snapshot_id == snapshot_id:
            return True
        snapshot = metadata.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return False


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
    summary = _day_facts(table, partition)
    return summary.get(SUMMARY_PREFIX + "run-id") if summary else None


def _files_only_in(table, expired: list, kept: list) -> set[str]:
    """The data files the expired snapshots reference and the kept ones do not (a reference also counts as a deleted
    entry: a changelog read of a kept snapshot reads the files it removed).

    Reads the manifest list of every snapshot, but manifests only where needed: those no kept snapshot lists, and of
    the kept ones those whose partition bounds hold a day of such a file. So an expiry reads about what it expires,
    not the table's whole history (every day's append adds a manifest that later snapshots keep listing)."""
    from pyiceberg.expressions import EqualTo, Or
    from pyiceberg.expressions.visitors import inclusive_projection, manifest_evaluator

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
    days = sorted({_EPOCH + dt_module.timedelta(days=day) for day in candidates.values()})
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


_FS_CACHE: dict = {}


def _cached_fs(io, scheme: str, netloc: str) -> pafs.FileSystem:
    key = (scheme, netloc, tuple(sorted((k, str(v)) for k, v in io.properties.items())))
    if key not in _FS_CACHE:
        _FS_CACHE[key] = io.fs_by_scheme(scheme, netloc)
    return _FS_CACHE[key]


def _exists(path: str, output: OutputTables | DayCommit) -> bool:
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
        self._names = dict(table_names or DEFAULT_TABLES)
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
        return self.tables.day_commit(self._retention_days)

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
            if not self.day_commit()._exists_table(kind):
                # prepare() creates the tables at start-up from kinds that rows or the config gave: none did.
                raise lease.LeaseError(
                    f"table {name} does not exist yet and {partition} has no rows to take its column types from: "
                    f"not published (the first day with rows creates the tables, or state the kinds: setting "
                    f"column_kinds; score this day again after that)"
                )
            try:
                location = self.day_commit()._table(kind).location()
            except Exception as e:  # an unreachable catalog, a table dropped since start-up
                why = f"{type(e).__name__}: {e}"
                raise lease.LeaseError(f"table {name}: cannot find where its leases live ({why})") from None
            folder = storage.join(f"{storage.real_path(location)}.leases", f"{PARTITION_COLUMN}={partition}")
            scopes.append(LeaseScope(f"table {name} (catalog {catalog}) {PARTITION_COLUMN}={partition}", folder))
        return tuple(scopes)

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
            if _day_run(table, partition) == run_id:
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

        def fence_each_commit(step: str) -> None:
            if step.endswith("-planned"):  # each table's commit attempt: loaded and planned, about to commit
                fence()
            stop_here_if_asked(step)

        def holds_the_day() -> bool:
            try:
                fence()
            except (lease.LeaseHeld, lease.LeaseError):
                return False
            return True

        fence()
        try:
            self.day_commit().publish(
                partition, files["scores"], files["rejects"], properties, fence_each_commit, holds_the_day
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
        summary = _day_facts(self.tables.reader.load_table(self.tables.table_names["scores"]), partition)
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
        folder = self._reports_dir(partition, check.manifest["run_id"])
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
