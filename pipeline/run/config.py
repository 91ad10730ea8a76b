"""The typed run configuration, built once from a YAML file and command-line overrides, validated at start-up."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from model.runtime import AUTO, RUNTIMES
from pipeline.errors import ConfigError
from pipeline.publish.publisher import DEFAULT_ICEBERG_TABLES, FORMATS, ICEBERG
from transforms.schema import Columns

DEFAULT_CONFIG = "configs/local.yaml"


# Runner names that run the pipeline on this machine: DirectRunner (run as Beam's FnApiRunner) and FnApiRunner itself.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner")


@dataclass(frozen=True)
class ScoreConfig:
    """Everything a scoring or backfill run needs besides Beam's own options."""

    customers: str = "data/sample/customers"
    reviews: str = "data/sample/reviews"
    model_dir: str = "data/model"
    output: str = "output/scores"
    date: str | None = None
    columns: Columns = field(default_factory=Columns)
    # Rows per Arrow batch read from Parquet; every later stage works on batches of this size.
    read_batch_size: int = 16384
    # Rows per model call: every call gets exactly this many (the last batch padded), so the compiled model is traced
    # once.
    inference_batch_size: int = 4096
    # The model runtime: litert (the bundle's LiteRT conversion, no TensorFlow in the scoring process), tensorflow
    # (the Keras model as an XLA-compiled tf.function), or auto: litert, or tensorflow for a pipeline of at least
    # tensorflow_from_rows review rows. litert calls have the bundle's batch size (4096).
    runtime: str = AUTO
    # Where `runtime: auto` switches to tensorflow, in review rows per pipeline; unset: the curve measured for this
    # CPU vendor on a local run (model.runtime.measured_tensorflow_from_rows), never on a remote one. Which runtime
    # is faster depends on the CPU: measure your host's curve (benchmarks/README.md).
    tensorflow_from_rows: int | None = None
    # XLA-compile the model call (same scores within 1e-5, several times the throughput on CPU).
    jit_compile: bool = True
    # Background threads per worker for featurizing, and as many again for model calls: they work on earlier tables
    # while the worker reads and validates the next (Arrow and TensorFlow release the GIL). See benchmarks/README.md.
    background_threads: int = 2
    # Row groups are grouped into read tasks of about this many rows: the unit of parallelism. Small enough that
    # --direct_num_workers=2 gets a task per worker from a 200k-row file of 100k-row groups.
    rows_per_read_task: int = 100_000
    # The customer table is broadcast to every worker while its size, estimated from the Parquet footers at
    # start-up, is at most this many MiB; above it the join becomes a keyed shuffle join (0: always shuffle).
    broadcast_limit_mb: int = 512
    allow_empty: bool = False
    skip_existing: bool = False
    # A partition with more than this fraction of its rows rejected is not published (the run exits 1 naming it).
    max_reject_fraction: float = 0.1
    # A run's lease on its partitions lapses this long after it was taken (or renewed), so a killed run's partitions
    # can be taken over without --take-over-lease. Longer than any sane run; backfills renew it per chunk.
    lease_expiry_hours: float = 6.0
    # Backfills run as one pipeline per this many days, each chunk published before the next starts: a crash
    # costs at most one chunk, while the model still loads once per chunk rather than once per day.
    backfill_chunk_days: int = 7
    # Population stability index above which the report flags drift against the previous partition.
    psi_threshold: float = 0.2
    # What the scores are published as: parquet (Hive-style dt= folders with a _SUCCESS manifest each) or iceberg
    # (tables in a pyiceberg catalog; see catalog).
    output_format: str = "parquet"
    # pyiceberg catalog properties for output_format iceberg, passed through (type sql/rest/glue/hive, uri,
    # warehouse, s3.* ...); when absent, a SQLite SQL catalog at OUTPUT/catalog.db with its warehouse OUTPUT/warehouse.
    catalog: dict[str, Any] | None = None
    # The Iceberg tables' names, {scores: NAMESPACE.TABLE, rejects: NAMESPACE.TABLE}; created on first use.
    iceberg_tables: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ICEBERG_TABLES))
    # output_format iceberg: after each publish, expire the tables' snapshots older than this many days (keeping the
    # one current then, so time travel reaches back this far) and delete the data files only they referenced. The
    # days' facts (run, model version, rows) are table properties and stay. Unset: never expire.
    snapshot_retention_days: float | None = None
    # The kinds of the review id (int or string) and text (string or binary) columns, when stated: a review file of
    # another kind fails its partition, and an empty first night into Iceberg creates its tables with them (without
    # them, and without a file or a table to take them from, it creates none). Unset: taken from the files.
    column_kinds: dict[str, Any] = field(default_factory=dict)
    # Options for Beam's PipelineOptions, e.g. runner, direct_num_workers, project, temp_location.
    beam: dict[str, Any] = field(default_factory=lambda: {"runner": "DirectRunner"})
    # What a run tells the systems that watch it (pipeline/run/telemetry.py), written at the end of every run,
    # failed or not: a Prometheus textfile (*.prom, for node_exporter's textfile collector) and/or a Pushgateway URL,
    # and OpenLineage events to a file (JSON lines) and/or over HTTP (lineage: url, endpoint, api_key, timeout,
    # namespace, job_name). lineage_parent: NAMESPACE/JOB/RUN_ID of a scheduler's task run (Airflow's macro).
    metrics_file: str | None = None
    pushgateway: str | None = None
    lineage_file: str | None = None
    lineage_parent: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    def beam_flags(self) -> list[str]:
        flags = []
        for key, value in self.beam.items():
            if isinstance(value, bool):
                if value:
                    flags.append(f"--{key}")
            elif isinstance(value, list):
                flags.extend(f"--{key}={item}" for item in value)
            else:
                flags.append(f"--{key}={value}")
        return flags


_SCALARS = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _check_type(source: str, key: str, value: Any, annotation: str) -> Any:
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None and optional:
        return None
    if base in _SCALARS:
        expected = _SCALARS[base]
        if isinstance(value, bool) and base != "bool":
            raise ConfigError(f"{source}: setting {key!r} must be {base}, got {value!r}")
        if not isinstance(value, expected):
            raise ConfigError(f"{source}: setting {key!r} must be {base}, got {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("dict"):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: setting {key!r} must be a mapping")
        return dict(value)
    return value


def _build_columns(source: str, value: Any) -> Columns:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: setting 'columns' must be a mapping")
    known = {f.name for f in dataclasses.fields(Columns)}
    for key in value:
        if key not in known:
            raise ConfigError(f"{source}: unknown setting 'columns.{key}' (known: {', '.join(sorted(known))})")
    data = dict(value)
    if "features" in data:
        features = data["features"]
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise ConfigError(f"{source}: setting 'columns.features' must be a non-empty list of column names")
        data["features"] = tuple(features)
    for key, item in data.items():
        if key != "features" and not isinstance(item, str):
            raise ConfigError(f"{source}: setting 'columns.{key}' must be a column name")
    return Columns(**data)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def validate_date(value: str, setting: str = "date") -> str:
    """value when it is a real date spelled exactly YYYY-MM-DD. Python's fromisoformat also takes 20261126 and
    2026-W48-4, which would read and write a second spelling of one partition (dt=20261126 beside dt=2026-11-26)."""
    try:
        if isinstance(value, str) and _DATE.fullmatch(value):
            return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise ConfigError(f"setting {setting!r} must be a date YYYY-MM-DD, got {value!r}") from None


# The column kinds a config may state (setting column_kinds), and the kinds each may be.
COLUMN_KINDS = {"review_id": ("int", "string"), "review_text": ("string", "binary")}


def build_config(data: dict, source: str = "config") -> ScoreConfig:
    """A ScoreConfig from a mapping; an unknown key or a value of the wrong type fails naming it."""
    fields = {f.name: f for f in dataclasses.fields(ScoreConfig)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        if key == "columns":
            values[key] = _build_columns(source, value)
        elif key == "date" and type(value) is dt.date:  # YAML reads an unquoted 2026-11-26 as a date
            values[key] = value.isoformat()
        elif key == "beam":  # over the default options, so a config states only what differs (the runner, say)
            values[key] = {**fields["beam"].default_factory(), **_check_type(source, key, value, "dict")}
        else:
            values[key] = _check_type(source, key, value, str(fields[key].type))
    config = ScoreConfig(**values)
    for key in (
        "read_batch_size",
        "inference_batch_size",
        "rows_per_read_task",
        "background_threads",
        "backfill_chunk_days",
    ):
        if getattr(config, key) < 1:
            raise ConfigError(f"{source}: setting {key!r} must be at least 1, got {getattr(config, key)}")
    if config.tensorflow_from_rows is not None and config.tensorflow_from_rows < 1:
        raise ConfigError(
            f"{source}: setting 'tensorflow_from_rows' must be at least 1 or unset, got {config.tensorflow_from_rows}"
        )
    if config.runtime not in (AUTO, *RUNTIMES):
        known = ", ".join((AUTO, *RUNTIMES))
        raise ConfigError(f"{source}: setting 'runtime' must be one of {known}, got {config.runtime!r}")
    if config.output_format not in FORMATS:
        raise ConfigError(
            f"{source}: setting 'output_format' must be one of {', '.join(FORMATS)}, got {config.output_format!r}"
        )
    if config.catalog is not None and config.output_format != ICEBERG:
        raise ConfigError(f"{source}: setting 'catalog' is for output_format iceberg, not {config.output_format}")
    if config.snapshot_retention_days is not None:
        if config.output_format != ICEBERG:
            raise ConfigError(
                f"{source}: setting 'snapshot_retention_days' is for output_format iceberg, not {config.output_format}"
            )
        if config.snapshot_retention_days <= 0:
            raise ConfigError(
                f"{source}: setting 'snapshot_retention_days' must be positive (or unset: never expire), got "
                f"{config.snapshot_retention_days}"
            )
    for column, kind in config.column_kinds.items():
        allowed = COLUMN_KINDS.get(column)
        if allowed is None:
            raise ConfigError(
                f"{source}: unknown setting 'column_kinds.{column}' (known: {', '.join(sorted(COLUMN_KINDS))})"
            )
        if kind not in allowed:
            raise ConfigError(
                f"{source}: setting 'column_kinds.{column}' must be one of {', '.join(allowed)}, got {kind!r}"
            )
    tables = config.iceberg_tables
    if sorted(tables) != ["rejects", "scores"] or not all(isinstance(v, str) and "." in v for v in tables.values()):
        raise ConfigError(
            f"{source}: setting 'iceberg_tables' must map scores and rejects to NAMESPACE.TABLE names, got {tables!r}"
        )
    if config.broadcast_limit_mb < 0:
        raise ConfigError(f"{source}: setting 'broadcast_limit_mb' must be 0 or more, got {config.broadcast_limit_mb}")
    if config.psi_threshold <= 0:
        raise ConfigError(f"{source}: setting 'psi_threshold' must be positive")
    if not 0.0 <= config.max_reject_fraction <= 1.0:
        raise ConfigError(
            f"{source}: setting 'max_reject_fraction' must be between 0 and 1, got {config.max_reject_fraction}"
        )
    if config.lease_expiry_hours <= 0:
        raise ConfigError(f"{source}: setting 'lease_expiry_hours' must be positive")
    for key in ("customers", "reviews", "model_dir", "output"):
        if not getattr(config, key):
            raise ConfigError(f"{source}: setting {key!r} must not be empty")
    if config.date is not None:
        validate_date(config.date)
    return config


def read_config_file(path: str) -> dict:
    """The mapping in a YAML config file, read with yaml.safe_load."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except ValueError as e:  # YAML's date constructor: an unquoted 2026-11-31 is no day
        raise ConfigError(f"{path}: not valid YAML: a date that is no day ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of settings")
    return data


def load_config(path: str | None, overrides: dict | None = None) -> ScoreConfig:
    """The config from a file (the default one when path is None and it exists) with overrides on top."""
    data: dict = {}
    source = "built-in defaults"
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is not None:
        data = read_config_file(path)
        source = path
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "beam":
            merged["beam"] = {**merged.get("beam", {}), **value}
        else:
            merged[key] = value
    return build_config(merged, source)
