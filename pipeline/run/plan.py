"""Start-up checks and the read plan: every fatal input, model or output problem is found here, before any write."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from model.bundle import check_bundle, resolve_model_dir
from pipeline import storage
from pipeline.errors import ConfigError, OutputError
from pipeline.publish.factory import publisher_for
from pipeline.publish.publisher import Publisher
from pipeline.run.config import ScoreConfig
from transforms.io import InputFile, inspect_files, partition_path, resolve_files
from transforms.schema import InputError, RunSchema, id_kind, is_number, text_kind

_LOG = logging.getLogger(__name__)

# Why a day of a dated run is skipped: published already by this model version (--skip-existing), or no input.
ALREADY_PUBLISHED, NO_INPUT = "already published", "no input"


def new_run_id(started: float) -> str:
    """A run's id: when it started (UTC, to the second) and 8 random hex digits, e.g. 20261128T020000Z-4f1c2a9e."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]


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
    # Why each skipped day was skipped, as a kind: ALREADY_PUBLISHED (--skip-existing) or NO_INPUT.
    skip_kinds: dict[str, str] = field(default_factory=dict)
    # Partitions refused at start-up (an unreadable file, a missing or wrong-typed column in that day's input), with
    # why: reported at the end like a partition that fails mid-run, while every other partition runs.
    failed: dict[str, str] = field(default_factory=dict)
    output: str = ""
    staging_root: str = ""
    # The bundle directory every worker loads (a models root's CURRENT resolved at launch) and its content version.
    model_dir: str = ""
    # Where and how the partitions are published (pipeline/publish/publisher.py).
    publisher: Publisher | None = None
    # The inputs as datasets (lineage, Beam Lineage): a folder dataset by its root, never one per day folder.
    customers_root: str = ""
    reviews_root: str = ""
    # The leases this run holds per partition, {lease folder: generation} (its fencing tokens; the publisher's
    # LeaseScopes say which), filled in once the leases are taken.
    leases: dict[str, dict[str, int]] = field(default_factory=dict)
    lease_expiry_seconds: float = 6 * 3600.0
    # Whether the id and text kinds came from rows (or the config's column_kinds), not a guess made with no file:
    # only then may the output create tables from them.
    kinds_known: bool = True

    def skipped_as(self, kind: str) -> list[str]:
        """The days skipped for one reason (ALREADY_PUBLISHED or NO_INPUT), in order."""
        return [day for day in self.skipped if self.skip_kinds.get(day) == kind]


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


def _inspect_customers(config: ScoreConfig) -> tuple[list[InputFile], tuple[str, str]]:
    """The customer files and the customer id's kind with the file that set it; any problem stops the run."""
    paths = resolve_files(config.customers)
    if not paths:
        raise InputError(f"{config.customers}: no customer files match")
    files = []
    c = config.columns
    kind = None
    for info, schema in inspect_files([(path, i, "") for i, path in enumerate(paths)]):
        path = info.path
        this = _kind(path, schema, c.customer_id, id_kind, "an integer or string id")
        if kind is not None and this != kind[0]:
            raise InputError(f"{path}: column {c.customer_id!r} is {this} here but {kind[0]} in {kind[1]}")
        kind = kind or (this, path)
        for feature in c.features:
            _kind(path, schema, feature, lambda t: "number" if is_number(t) else None, "a number")
        files.append(info)
    return files, kind


def _inspect_reviews(
    paths_by_partition: dict[str, list[str]], config: ScoreConfig, customer_kind: tuple[str, str], failed: dict
) -> tuple[list[InputFile], dict[str, str]]:
    """The review files of every partition and the run's id and text kinds.

    A problem with one file (not Parquet, truncated, a missing or wrong-typed column, a kind that differs from the
    run's) belongs to its partition: it is recorded in `failed` (partition → why) and that partition's files are
    dropped, so the other partitions run. The run's kinds are those most of the good files have.
    """
    c = config.columns
    listed = [(path, partition) for partition, paths in paths_by_partition.items() for path in paths]
    inspected = inspect_files([(path, i, part) for i, (path, part) in enumerate(listed)], return_errors=True)
    good: list[tuple[InputFile, dict[str, str]]] = []
    for (path, partition), item in zip(listed, inspected):
        if isinstance(item, InputError):
            failed.setdefault(partition, str(item))
            continue
        info, schema = item
        try:
            kinds = {
                "review_id": _kind(path, schema, c.review_id, id_kind, "an integer or string id"),
                "customer_id": _kind(path, schema, c.customer_id, id_kind, "an id"),
                "review_text": _kind(path, schema, c.review_text, text_kind, "a string"),
            }
        except InputError as e:
            failed.setdefault(partition, str(e))
            continue
        good.append((info, kinds))
    names = {"review_id": c.review_id, "customer_id": c.customer_id, "review_text": c.review_text}
    chosen = {"customer_id": customer_kind}
    for column, kind in config.column_kinds.items():  # stated: every file must agree
        chosen[column] = (kind, f"setting 'column_kinds.{column}'")
    for column in ("review_id", "review_text"):
        if column in chosen:
            continue
        counted = Counter(k[column] for _, k in good)
        if counted:
            kind = counted.most_common(1)[0][0]
            chosen[column] = (kind, next(info.path for info, k in good if k[column] == kind))
    for info, kinds in good:
        for column, (kind, where) in chosen.items():
            if kinds[column] != kind and info.partition not in failed:
                failed[info.partition] = (
                    f"{info.path}: column {names[column]!r} is {kinds[column]} here but {kind} in {where}"
                )
    files = [info for info, _ in good if info.partition not in failed]
    return files, {column: kind for column, (kind, _) in chosen.items()}


def _check_writable(output: str, staging_root: str) -> None:
    """Probes both the output root and its staging folder with a small write."""
    if not storage.is_remote(output) and os.path.exists(output) and not os.path.isdir(output):
        raise OutputError(f"{output}: output location is not writable (it exists and is not a directory)")
    for root in (staging_root, output):
        probe = storage.join(root, f"_probe-{uuid.uuid4().hex}")
        try:
            storage.write_atomically(probe, b"probe")
            storage.delete([probe])
        except Exception as e:
            reason = " ".join(str(e).split())[:200]
            raise OutputError(f"{output}: output location is not writable ({reason})") from None


def staging_root_for(output: str, run_id: str) -> str:
    """Staging lives beside the output (never inside it), so swapping a partition never moves staging."""
    return FileSystems.join(output.rstrip("/") + ".staging", run_id)


def _input_root(pattern: str) -> str:
    """The folder or file an input pattern names, without its glob part."""
    glob = [pattern.index(ch) for ch in "*?[" if ch in pattern]
    return pattern[: min(glob)].rsplit("/", 1)[0] if glob else pattern


def _normalized(path: str) -> str:
    return path.rstrip("/") if storage.is_remote(path) else os.path.realpath(os.path.abspath(path))


def _check_output_apart(config: ScoreConfig) -> None:
    """Refuses an output equal to, inside or above an input: the first run would write into its own input."""
    output = _normalized(config.output)
    for setting in ("reviews", "customers", "model_dir"):
        source = _normalized(_input_root(getattr(config, setting)))
        if output == source or source.startswith(output + "/") or output.startswith(source + "/"):
            where = "is" if output == source else ("is inside" if output.startswith(source + "/") else "holds")
            raise ConfigError(
                f"setting 'output' {config.output} {where} the {setting} input {getattr(config, setting)}: "
                "choose an output apart from every input"
            )


def _stored_kinds(publisher: Publisher, config: ScoreConfig) -> dict[str, str]:
    """The review id and text kinds of what the output already holds (an Iceberg table's columns), for a run with
    no review file to take them from; {} when it holds none."""
    stored, c = publisher.stored_schemas(), config.columns
    kinds = {}
    if "scores" in stored and c.review_id in stored["scores"].names:
        kinds["review_id"] = id_kind(stored["scores"].field(c.review_id).type)
    if "rejects" in stored and c.review_text in stored["rejects"].names:
        kinds["review_text"] = text_kind(stored["rejects"].field(c.review_text).type)
    return {column: kind for column, kind in kinds.items() if kind is not None}


def _published_by(publisher: Publisher, partition: str, model_version: str) -> str | None:
    """Why --skip-existing may skip a partition (complete and scored by this model version), or None."""
    published = publisher.published_version(partition)
    if published is None:
        return None
    if published != model_version:
        _LOG.info(
            "%s is complete but scored by model %s, not %s: scoring it again", partition, published, model_version
        )
        return None
    return f"already published, complete and scored by model {model_version} (--skip-existing)"


def plan_run(
    config: ScoreConfig, dates: list[str] | None, backfill: bool = False, run_id: str | None = None
) -> RunPlan:
    """Checks the model, inputs and output, and decides what to read; raises on any fatal problem.

    Problems of the run (config, model, customers, output) raise. In a backfill, a problem that belongs to one day's
    input fails that day only (RunPlan.failed); a single-partition run raises naming the file. Then the output is
    made ready (an Iceberg table created, from kinds that rows or the config gave) and probed with a small write.
    run_id: the id the run's signals already carry (a new one when None).
    """
    plan = inspect_run(config, dates, backfill, run_id)
    plan.publisher.prepare(plan.publisher.shard_schemas(plan.schema), create=plan.kinds_known)
    _check_writable(config.output, plan.staging_root)
    if not plan.kinds_known:  # no row, no column_kinds: days an output cannot take a guess for fail here, not later
        refused = {p: why for p in plan.partitions if (why := plan.publisher.refuses_guessed_kinds(p))}
        if refused:
            plan = dataclasses.replace(
                plan,
                partitions=[p for p in plan.partitions if p not in refused],
                failed={**plan.failed, **refused},
            )
    return plan


def inspect_run(
    config: ScoreConfig, dates: list[str] | None, backfill: bool = False, run_id: str | None = None
) -> RunPlan:
    """The plan_run checks that only read: the model, the inputs' footers and what the output holds. What a dry run
    shows; it writes nothing and takes no lease."""
    started = time.time()
    run_id = run_id or new_run_id(started)
    _check_output_apart(config)
    publisher = publisher_for(
        config.output, config.output_format, config.catalog, config.iceberg_tables, config.snapshot_retention_days
    )
    publisher.check_layout(dates is not None)
    model_dir = resolve_model_dir(config.model_dir)
    bundle = check_bundle(model_dir)  # no TensorFlow: workers load the runtime and check its parity
    if list(bundle.feature_names) != list(config.columns.features):
        raise InputError(
            f"setting 'columns.features' {list(config.columns.features)} does not match the model bundle's "
            f"feature_names {list(bundle.feature_names)}"
        )
    customer_files, customer_kind = _inspect_customers(config)

    skipped: dict[str, str] = {}
    skip_kinds: dict[str, str] = {}
    paths_by_partition: dict[str, list[str]] = {}
    if dates is None:
        paths = resolve_files(config.reviews)
        if not paths and not config.allow_empty:
            raise InputError(f"{config.reviews}: no review files match (pass --allow-empty to write an empty output)")
        paths_by_partition[""] = paths
    else:
        for day in dates:
            done = config.skip_existing and _published_by(publisher, day, bundle.model_version)
            if done:
                skipped[day], skip_kinds[day] = done, ALREADY_PUBLISHED
                continue
            day_root = partition_path(config.reviews.rstrip("/"), day)
            paths = resolve_files(day_root)
            if not paths and not config.allow_empty:
                if backfill:
                    skipped[day], skip_kinds[day] = f"no review files in {day_root}", NO_INPUT
                    continue
                raise InputError(f"{day_root}: no review files match (pass --allow-empty to write an empty partition)")
            paths_by_partition[day] = paths
        if (
            backfill
            and not paths_by_partition
            and len(skipped) == len(dates)
            and ALREADY_PUBLISHED not in skip_kinds.values()
        ):
            raise InputError(
                f"{config.reviews}: no review files for any day from {dates[0]} to {dates[-1]} (looked in "
                f"dt=YYYY-MM-DD/ below it; pass --allow-empty to write empty partitions)"
            )
    failed: dict[str, str] = {}
    review_files, kinds = _inspect_reviews(paths_by_partition, config, customer_kind, failed)
    if failed and not backfill:
        raise InputError(next(iter(failed.values())))
    typed = {"review_id", "review_text"}
    if not typed <= kinds.keys():  # no review file: the kinds the output already holds, never a guess
        kinds = {**_stored_kinds(publisher, config), **kinds}
    schema = RunSchema(
        columns=config.columns,
        review_id_kind=kinds.get("review_id", "int"),
        customer_id_kind=kinds["customer_id"],
        text_kind=kinds.get("review_text", "string"),
    )
    partitions = [p for p in paths_by_partition if p not in failed]
    rows = {p: 0 for p in partitions}
    for f in review_files:
        rows[f.partition] += f.num_rows
    staging_root = staging_root_for(config.output, run_id)
    return RunPlan(
        run_id=run_id,
        started_at=started,
        schema=schema,
        model_version=bundle.model_version,
        customer_files=customer_files,
        review_files=review_files,
        partitions=partitions,
        rows_by_partition=rows,
        files_by_partition={p: paths_by_partition[p] for p in partitions},
        skipped=skipped,
        skip_kinds=skip_kinds,
        failed=failed,
        output=config.output,
        staging_root=staging_root,
        model_dir=model_dir,
        publisher=publisher,
        customers_root=_input_root(config.customers).rstrip("/"),
        reviews_root=(config.reviews if dates is not None else _input_root(config.reviews)).rstrip("/"),
        lease_expiry_seconds=config.lease_expiry_hours * 3600,
        kinds_known=typed <= kinds.keys(),
    )
