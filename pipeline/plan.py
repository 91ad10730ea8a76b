"""Start-up checks and the read plan: every fatal input, model or output problem is found here, before any write."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from model.bundle import check_bundle, resolve_model_dir
from pipeline.config import ScoreConfig
from pipeline.publish import is_complete
from transforms.io import InputFile, inspect_files, partition_path, resolve_files
from transforms.schema import InputError, RunSchema, id_kind, is_number, text_kind

_LOG = logging.getLogger(__name__)


class OutputError(ValueError):
    """The output location cannot be written; the message names it."""


@dataclass(frozen=True)
class RunPlan:
    """What one run will read and write, decided and checked at start-up."""

    run_id: str
    started_at: float
    schema: RunSchema
    model_version: str
    customer_files: list[InputFile]
    review_files: list[InputFile]
    partitions: list[str]
    rows_by_partition: dict[str, int]
    files_by_partition: dict[str, list[str]]
    skipped: dict[str, str] = field(default_factory=dict)
    output: str = ""
    staging_root: str = ""
    # The bundle directory every worker loads (a models root's CURRENT resolved at launch) and its content version.
    model_dir: str = ""


def days_between(start: str, end: str) -> list[str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise InputError(f"--end {end} is before --start {start}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _kind(path: str, schema: pa.Schema, column: str, decide, expected: str) -> str:
    index = schema.get_field_index(column)
    if index < 0:
        raise InputError(f"{path}: missing required column {column!r}")
    arrow_type = schema.field(index).type
    kind = decide(arrow_type)
    if kind is None:
        raise InputError(f"{path}: column {column!r} has type {arrow_type}, expected {expected}")
    return kind


def _same_kind(kinds: dict[str, tuple[str, str]], column: str, kind: str, path: str) -> None:
    if column in kinds and kinds[column][0] != kind:
        first_kind, first_path = kinds[column]
        raise InputError(f"{path}: column {column!r} is {kind} here but {first_kind} in {first_path}")
    kinds.setdefault(column, (kind, path))


def _inspect_customers(config: ScoreConfig, kinds: dict) -> list[InputFile]:
    paths = resolve_files(config.customers)
    if not paths:
        raise InputError(f"{config.customers}: no customer files match")
    files = []
    c = config.columns
    for info, schema in inspect_files([(path, i, "") for i, path in enumerate(paths)]):
        path = info.path
        kind = _kind(path, schema, c.customer_id, id_kind, "an integer or string id")
        _same_kind(kinds, "customer_id", kind, path)
        for feature in c.features:
            _kind(path, schema, feature, lambda t: "number" if is_number(t) else None, "a number")
        files.append(info)
    return files


def _inspect_reviews(paths_by_partition: dict[str, list[str]], config: ScoreConfig, kinds: dict) -> list[InputFile]:
    files = []
    c = config.columns
    listed = [(path, partition) for partition, paths in paths_by_partition.items() for path in paths]
    for info, schema in inspect_files([(path, i, partition) for i, (path, partition) in enumerate(listed)]):
        path = info.path
        _same_kind(kinds, "review_id", _kind(path, schema, c.review_id, id_kind, "an integer or string id"), path)
        _same_kind(kinds, "customer_id", _kind(path, schema, c.customer_id, id_kind, "an id"), path)
        _same_kind(kinds, "review_text", _kind(path, schema, c.review_text, text_kind, "a string"), path)
        files.append(info)
    return files


def _check_writable(output: str, staging_root: str) -> None:
    """Probes both the output root and its staging folder with a small write."""
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise OutputError(f"{output}: output location is not writable (it exists and is not a directory)")
    for root in (staging_root, output):
        probe = FileSystems.join(root, f"_probe-{uuid.uuid4().hex}")
        try:
            with FileSystems.create(probe) as f:
                f.write(b"probe")
            FileSystems.delete([probe])
        except Exception as e:
            reason = " ".join(str(e).split())[:200]
            raise OutputError(f"{output}: output location is not writable ({reason})") from None


def success_marker(output: str, partition: str) -> str:
    return FileSystems.join(partition_path(output, partition), "_SUCCESS")


def staging_root_for(output: str, run_id: str) -> str:
    """Staging lives beside the output (never inside it), so swapping a partition never moves staging."""
    return FileSystems.join(output.rstrip("/") + ".staging", run_id)


def plan_run(config: ScoreConfig, dates: list[str] | None, backfill: bool = False) -> RunPlan:
    """Checks the model, inputs and output, and decides what to read; raises on any fatal problem."""
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    model_dir = resolve_model_dir(config.model_dir)
    bundle = check_bundle(model_dir)  # no TensorFlow: workers load the runtime and check its parity
    if list(bundle.feature_names) != list(config.columns.features):
        raise InputError(
            f"setting 'columns.features' {list(config.columns.features)} does not match the model bundle's "
            f"feature_names {list(bundle.feature_names)}"
        )
    kinds: dict = {}
    customer_files = _inspect_customers(config, kinds)

    skipped: dict[str, str] = {}
    paths_by_partition: dict[str, list[str]] = {}
    if dates is None:
        paths = resolve_files(config.reviews)
        if not paths and not config.allow_empty:
            raise InputError(f"{config.reviews}: no review files match (pass --allow-empty to write an empty output)")
        paths_by_partition[""] = paths
    else:
        for day in dates:
            if config.skip_existing and is_complete(partition_path(config.output, day)):
                skipped[day] = "already published and complete (--skip-existing)"
                continue
            day_root = FileSystems.join(config.reviews.rstrip("/"), f"dt={day}")
            paths = resolve_files(day_root)
            if not paths and not config.allow_empty:
                if backfill:
                    skipped[day] = f"no review files in {day_root}"
                    continue
                raise InputError(f"{day_root}: no review files match (pass --allow-empty to write an empty partition)")
            paths_by_partition[day] = paths
    review_files = _inspect_reviews(paths_by_partition, config, kinds)
    schema = RunSchema(
        columns=config.columns,
        review_id_kind=kinds.get("review_id", ("int", ""))[0],
        customer_id_kind=kinds["customer_id"][0],
        text_kind=kinds.get("review_text", ("string", ""))[0],
    )
    rows = {p: 0 for p in paths_by_partition}
    for f in review_files:
        rows[f.partition] += f.num_rows
    staging_root = staging_root_for(config.output, run_id)
    _check_writable(config.output, staging_root)
    return RunPlan(
        run_id=run_id,
        started_at=started,
        schema=schema,
        model_version=bundle.model_version,
        customer_files=customer_files,
        review_files=review_files,
        partitions=list(paths_by_partition),
        rows_by_partition=rows,
        files_by_partition=paths_by_partition,
        skipped=skipped,
        output=config.output,
        staging_root=staging_root,
        model_dir=model_dir,
    )
