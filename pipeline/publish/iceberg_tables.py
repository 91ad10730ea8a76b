"""The job's Iceberg tables read and inspected (OutputTables): where they live, a published day's facts, verify.

Changes go through iceberg_commit.DayCommit, as pyiceberg splits Table from Transaction; the publisher that uses both
is iceberg.IcebergPublisher. What OutputTables takes and guarantees: iceberg_commit's docstring (the interface).
"""

from __future__ import annotations

import contextlib
import datetime as dt_module
import glob
import json
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import JobError, OutputError
from pipeline.publish.iceberg_compat import iceberg_schema
from pipeline.publish.publisher import DEFAULT_ICEBERG_TABLES

_LOG = logging.getLogger(__name__)

PARTITION_COLUMN = "dt"
CATALOG_NAME = "sentiment"
SUMMARY_PREFIX = "sentiment."
# A table property per published day, `sentiment.day.YYYY-MM-DD`: that day's facts (JSON), set by its commit.
DAY_PROPERTY_PREFIX = "sentiment.day."
REQUIRED_PROPERTIES = ("run-id", "model-version", "rows-read", "rows-scored", "rows-rejected")
# Which property counts each table's rows.
ROWS_PROPERTY = {"scores": "rows-scored", "rejects": "rows-rejected"}


class IcebergSchemaError(JobError, ValueError):
    """A run's columns do not match an existing table's; the message names the table and the column."""


def with_partition_column(arrow_schema: pa.Schema) -> pa.Schema:
    if PARTITION_COLUMN in arrow_schema.names:
        return arrow_schema
    return arrow_schema.append(pa.field(PARTITION_COLUMN, pa.date32()))


def check_schema(table_name: str, table_schema, arrow_schema: pa.Schema, where: str = "this run") -> None:
    """Raises IcebergSchemaError naming the table and the first column that differs between a table and a run."""
    given = {f.name: f for f in iceberg_schema(with_partition_column(arrow_schema)).fields}
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


def partition_date(partition: str) -> dt_module.date:
    try:
        return dt_module.date.fromisoformat(partition)
    except ValueError:
        raise ValueError(f"partition {partition!r}: not a YYYY-MM-DD date") from None


def basename_of(path: str) -> str:
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


def sqlite_file(uri: str) -> str | None:
    """The file a SQLAlchemy SQLite URL names, as SQLite opens it: the database part decoded by SQLAlchemy, and with
    `uri=true` read as an SQLite URI filename (`file:PATH`, decoded once more; sqlite_url writes them so). None for
    another database, an in-memory one, or a uri SQLAlchemy cannot read (load_catalog then names it)."""
    from sqlalchemy import make_url

    try:
        url = make_url(uri)
    except Exception:
        return None
    if not url.drivername.startswith("sqlite") or not url.database or url.database == ":memory:":
        return None
    if url.query.get("uri") == "true" and url.database.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url.database).path)
    return url.database


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
    model version, the tables' schemas. Changes go through an iceberg_commit.DayCommit over them, as pyiceberg's Table
    reads and its Transaction changes."""

    def __init__(
        self,
        output: str,
        catalog: dict | None = None,
        scores_table: str = DEFAULT_ICEBERG_TABLES["scores"],
        rejects_table: str = DEFAULT_ICEBERG_TABLES["rejects"],
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
        if storage.is_remote(output):
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
            return retry_racing_creation(lambda: load_catalog(name, **properties))
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
            elif database := sqlite_file(self.catalog_properties.get("uri", "")):
                # A configured SQLite file is created where it is named, its folder too (to write only: the reader
                # creates nothing).
                os.makedirs(os.path.dirname(database) or ".", exist_ok=True)
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
        return cached_fs(io, scheme, netloc), fs_path

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

        partition_date(partition)
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
            summary = day_facts(table, partition)
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
        return day_facts(table, partition)[SUMMARY_PREFIX + "model-version"]


def day_facts(table, partition: str) -> dict | None:
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


def day_run(table, partition: str) -> str | None:
    summary = day_facts(table, partition)
    return summary.get(SUMMARY_PREFIX + "run-id") if summary else None


_FS_CACHE: dict = {}


def cached_fs(io, scheme: str, netloc: str) -> pafs.FileSystem:
    key = (scheme, netloc, tuple(sorted((k, str(v)) for k, v in io.properties.items())))
    if key not in _FS_CACHE:
        _FS_CACHE[key] = io.fs_by_scheme(scheme, netloc)
    return _FS_CACHE[key]


def retry_racing_creation(make: Callable, attempts: int = 5):
    """Runs make(); retried when another process creates the catalog's SQLite tables or rows at the same moment.

    A creation that lost the race fails on a constraint (IntegrityError) or a lock (OperationalError); the retry
    finds what the other process created (load_catalog uses it; create_namespace raises NamespaceAlreadyExistsError).
    """
    import tenacity
    from sqlalchemy.exc import IntegrityError, OperationalError

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((OperationalError, IntegrityError)),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_incrementing(start=0.05, increment=0.05),  # 0.05 s after the first failure, 0.1 s, ...
        reraise=True,  # the last attempt's own error, not tenacity's RetryError
    )
    return retrying(make)
