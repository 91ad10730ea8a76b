"""The Parquet publish protocol: shards moved in under run-unique names, a `_SUCCESS` manifest written last, cleanup.

One protocol for local disk and object stores (`s3://`, `gs://`), built only from operations every store has:
create an object, rename (copy + delete on object stores) and delete. A partition folder shows Hive-convention
readers (pyarrow.dataset, Spark, Trino, DuckDB) only score shards of one schema; the rejects and the run's reports
are part of the same commit under names those readers skip:

    dt=D/scores-RUN-*.parquet          the scores
    dt=D/_rejects/rejects-RUN-*.parquet the rejects
    dt=D/_report/RUN/summary.json, report.md, score_histogram.png
    dt=D/_SUCCESS                       the manifest, written last: every file above with its rows and bytes

A partition is complete when `_SUCCESS` exists and every file it lists is there with the listed size and rows.
Publishing never removes a file of the previous complete partition before the new `_SUCCESS` is in place, so at
every moment the old or the new complete partition exists; a crash at any step leaves one of them, and the next
publish removes what no manifest lists. Reports carry the run id in their folder, so a crash before the manifest
never leaves a new report beside an old manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import failpoints, storage
from pipeline.errors import ConfigError, JobError
from pipeline.publish import lease
from pipeline.publish.publisher import (
    PARQUET,
    UNPARTITIONED_STAGING,
    LeaseScope,
    OutputDataset,
    PartitionCheck,
    PartitionFacts,
    Publisher,
)
from transforms.io import Shard

SUCCESS_FILE = "_SUCCESS"
SUMMARY_FILE = Publisher.summary_report
# Partitions are Hive-style folders named by this key: OUTPUT/dt=D.
PARTITION_KEY = "dt"
MANIFEST_FORMAT = "sentiment-partition-manifest/2"
# The layout before rejects and reports moved under "_" names: rescored once, never read as complete.
_OLD_FORMATS = ("sentiment-partition-manifest/1",)
DATA_PREFIXES = ("scores-", "rejects-")
REJECTS_DIR = "_rejects"
REPORT_DIR = "_report"
# What earlier layouts left directly in a partition folder; removed by the first publish of the current layout.
_OLD_REPORTS = ("summary.json", "report.md", "score_histogram.png")


class ManifestError(JobError, ValueError):
    """A `_SUCCESS` that is not a readable manifest; the message names the file."""


def footer_rows(path: str) -> int:
    """The rows a Parquet file's footer says it holds."""
    with FileSystems.open(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def shard_name(kind: str, staged_path: str) -> str:
    """A shard's name in the partition, relative to its folder: scores at the top, rejects under _rejects/."""
    name = storage.basename(staged_path)
    return name if kind == "scores" else f"{REJECTS_DIR}/{name}"


def report_name(run_id: str, name: str) -> str:
    return f"{REPORT_DIR}/{run_id}/{name}"


def read_manifest(partition_dir: str) -> dict | None:
    """The manifest in a partition's `_SUCCESS`, or None when there is no `_SUCCESS`."""
    path = storage.join(partition_dir, SUCCESS_FILE)
    if not storage.exists(path):
        return None
    manifest = storage.read_json(path)
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise ManifestError(f"{path}: not a readable manifest")
    if manifest.get("format") in _OLD_FORMATS:
        raise ManifestError(
            f"{path}: written in the earlier layout (rejects and reports beside the scores, which Hive-convention "
            "readers read as data): score this partition once more to publish it in the current layout"
        )
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return manifest


def published_summary(partition_dir: str) -> dict | None:
    """The summary.json the partition's manifest lists, or None when it has none or is not published."""
    try:
        manifest = read_manifest(partition_dir)
    except ManifestError:
        return None
    if not manifest or not manifest.get("summary"):
        return None
    return storage.read_json(storage.join(partition_dir, manifest["summary"]))


def _on_disk(partition_dir: str, run_ids: set[str]) -> dict[str, int]:
    """{name relative to the partition: bytes} of the files this job writes there: shards, rejects, the reports of
    the given runs."""
    found = {name: size for name, size in storage.sizes(storage.join(partition_dir, "*")).items()}
    found.update(
        {f"{REJECTS_DIR}/{n}": s for n, s in storage.sizes(storage.join(partition_dir, REJECTS_DIR, "*")).items()}
    )
    for run in run_ids:
        folder = storage.join(partition_dir, REPORT_DIR, run, "*")
        found.update({report_name(run, n): s for n, s in storage.sizes(folder).items()})
    return found


def check_partition(partition_dir: str, count_rows: bool = True) -> PartitionCheck:
    """Checks a partition against its manifest: every listed file there with its size and (optionally) rows."""

    def incomplete(why: str) -> PartitionCheck:
        return PartitionCheck(partition_dir, False, why)

    try:
        manifest = read_manifest(partition_dir)
    except ManifestError as e:
        return incomplete(str(e))
    if manifest is None:
        return incomplete(f"{partition_dir}: no {SUCCESS_FILE}: not published")
    on_disk = _on_disk(partition_dir, {manifest["run_id"]})
    counted = {"scores": 0, "rejects": 0}
    for entry in manifest["files"]:
        name, kind = entry["name"], entry["kind"]
        if name not in on_disk:
            return incomplete(f"{partition_dir}: {name} is missing (listed in {SUCCESS_FILE})")
        if on_disk[name] != entry["bytes"]:
            return incomplete(
                f"{partition_dir}: {name} has {on_disk[name]} bytes, {SUCCESS_FILE} lists {entry['bytes']}"
            )
        if kind not in counted:
            continue
        if count_rows:
            try:
                rows = footer_rows(storage.join(partition_dir, name))
            except Exception as e:
                return incomplete(f"{partition_dir}: {name} is not readable Parquet ({type(e).__name__})")
            if rows != entry["rows"]:
                return incomplete(f"{partition_dir}: {name} holds {rows} rows, {SUCCESS_FILE} lists {entry['rows']}")
        counted[kind] += entry["rows"]
    rows = manifest["rows"]
    if counted["scores"] != rows["scored"] or counted["rejects"] != rows["rejected"]:
        return incomplete(f"{partition_dir}: the files listed in {SUCCESS_FILE} do not add up to its row counts")
    if rows["scored"] + rows["rejected"] != rows["read"]:
        return incomplete(f"{partition_dir}: {SUCCESS_FILE} says scored + rejected != read")
    listed = {e["name"] for e in manifest["files"]}
    stray = sorted(n for n in on_disk if storage.basename(n).startswith(DATA_PREFIXES) and n not in listed)
    note = f"; {len(stray)} unlisted shard(s) from an unfinished publish, ignored" if stray else ""
    message = (
        f"{partition_dir}: complete: {rows['scored']} scored + {rows['rejected']} rejected = {rows['read']} read "
        f"in {len(listed)} file(s), run {manifest['run_id']}, model {manifest['model_version']}{note}"
    )
    return PartitionCheck(partition_dir, True, message, PartitionFacts.from_dict(manifest))


def publish_partition(
    shards: list[Shard],
    final_dir: str,
    facts: PartitionFacts,
    reports: dict[str, bytes],
    fence: Callable[[], None] | None = None,
) -> dict:
    """Publishes staged shards into final_dir; returns the manifest written to `_SUCCESS`.

    shards: the staged Parquet files, under run-unique names. facts: the run's facts for the partition, the
    manifest's own keys. reports: summary.json and report files, written under the run's own
    report folder before `_SUCCESS`. fence: called immediately before `_SUCCESS` is written; when it raises (the run
    lost its lease), or a write fails, this run's files are taken out again and nothing is published. Retrying after
    a crash at any step is safe: a shard already moved is not moved again. Each step passes a failpoint
    (failpoints.PARQUET_PUBLISH).
    """
    run_id = facts.run_id
    names = {}
    for shard in shards:
        name = shard_name(shard.kind, shard.path)
        destination = storage.join(final_dir, name)
        if storage.exists(shard.path):
            storage.move(shard.path, destination)
        elif not storage.exists(destination):
            raise FileNotFoundError(f"{shard.path}: staged shard is gone and was not published")
        names[name] = shard
    failpoints.hit("parquet.moved")

    try:
        for name, data in reports.items():
            storage.write_atomically(storage.join(final_dir, report_name(run_id, name)), data)
    except OSError:
        _withdraw(final_dir, list(names), run_id)
        raise
    failpoints.hit("parquet.reports")

    try:
        on_disk = _on_disk(final_dir, {run_id})
        missing = [n for n in [*names, *(report_name(run_id, r) for r in reports)] if n not in on_disk]
        if missing:  # another run's cleanup removed them: it holds the partition now (the fence says), or worse
            if fence is not None:
                fence()
            raise FileNotFoundError(f"{storage.join(final_dir, missing[0])}: vanished before the manifest was written")
        files = [
            {"name": name, "kind": shard.kind, "rows": int(shard.rows), "bytes": int(on_disk[name])}
            for name, shard in sorted(names.items())
        ]
        files += [
            {"name": report_name(run_id, name), "kind": "report", "bytes": int(on_disk[report_name(run_id, name)])}
            for name in sorted(reports)
        ]
        storage.sync_to_disk(
            [storage.join(final_dir, f["name"]) for f in files],
            [final_dir, storage.join(final_dir, REJECTS_DIR), storage.join(final_dir, REPORT_DIR, run_id)],
        )
        if fence is not None:
            fence()  # immediately before the manifest: the lease generation is the run's fencing token
    except Exception:
        _withdraw(final_dir, list(names), run_id)
        raise
    manifest = {
        "format": MANIFEST_FORMAT,
        **facts.to_dict(),
        "published_at": storage.utc_stamp(),
        "summary": report_name(run_id, SUMMARY_FILE) if SUMMARY_FILE in reports else None,
        "files": files,
    }
    storage.write_atomically(storage.join(final_dir, SUCCESS_FILE), json.dumps(manifest, indent=2).encode("utf-8"))
    failpoints.hit("parquet.manifest")

    remove_unlisted(final_dir, manifest, may_delete=None if fence is None else lambda: _still_held(fence))
    failpoints.hit("parquet.cleaned")
    return manifest


def _withdraw(final_dir: str, names: list[str], run_id: str) -> None:
    """Takes a refused publish's files back out of the partition (best effort: the next publish removes what is
    left), so a reader of the folder never sees the shards of a run that did not publish."""
    try:
        storage.delete([storage.join(final_dir, n) for n in names if storage.exists(storage.join(final_dir, n))])
        storage.delete_tree(storage.join(final_dir, REPORT_DIR, run_id))
    except Exception:
        pass


def _still_held(fence: Callable[[], None]) -> bool:
    try:
        fence()
    except Exception:  # lost (LeaseHeld) or unreadable: another run may be publishing the partition
        return False
    return True


def remove_unlisted(partition_dir: str, manifest: dict, may_delete: Callable[[], bool] | None = None) -> list[str]:
    """Deletes what this job wrote into a partition that its manifest does not list: earlier runs' shards and
    report folders, an unfinished publish's, temporary files, and the reports of the earlier layout.

    Only names this job writes are touched (`scores-*`, `rejects-*`, `*.tmp-*` at the top and in `_rejects/`, run
    folders in `_report/`): never anything else a user keeps there. may_delete: asked after the listing (whether
    this run still holds the partition's lease); when it says no, nothing is deleted: another run that moved files
    in took the lease first, and its files are not this run's to remove.
    """
    listed = {e["name"] for e in manifest["files"]}
    top = storage.sizes(storage.join(partition_dir, "*"))
    rejects = storage.sizes(storage.join(partition_dir, REJECTS_DIR, "*"))
    reports = storage.list_paths(storage.join(partition_dir, REPORT_DIR, "**"))
    if may_delete is not None and not may_delete():
        return []
    stale = [
        storage.join(partition_dir, name)
        for name in [*top, *(f"{REJECTS_DIR}/{n}" for n in rejects)]
        if (storage.basename(name).startswith(DATA_PREFIXES) and name not in listed)
        or storage.TEMP_MARK in name
        or name in _OLD_REPORTS
    ]
    storage.delete(stale)
    runs = {p.split(f"/{REPORT_DIR}/", 1)[1].split("/", 1)[0] for p in reports if f"/{REPORT_DIR}/" in p}
    for run in sorted(runs - {manifest["run_id"]}):
        storage.delete_tree(storage.join(partition_dir, REPORT_DIR, run))
        stale.append(storage.join(partition_dir, REPORT_DIR, run))
    return stale


def holds_parquet_output(root: str) -> bool:
    """Whether a root holds this format's files: a manifest or shards at the top, or dt= partitions (reads only)."""
    return bool(
        storage.exists(storage.join(root, SUCCESS_FILE))
        or storage.list_paths(storage.join(root, "*.parquet"))
        or storage.list_paths(storage.join(root, f"{PARTITION_KEY}=*", "*"))
    )


class ParquetFolders(Publisher):
    """Parquet partitions in Hive-style folders (OUTPUT/dt=D/, or OUTPUT/ itself without a date), each published by
    the protocol above and checked against its `_SUCCESS` manifest."""

    format = PARQUET

    def __init__(self, output: str):
        self.output = output

    @staticmethod
    def _folder(root: str, partition: str) -> str:
        return storage.join(root, f"{PARTITION_KEY}={partition}") if partition else root

    @staticmethod
    def lease_folder(control: str, partition: str) -> str:
        """A partition's lease folder below a control root (REAL_OUTPUT.staging): _leases/dt=D, or _leases/_output
        for an unpartitioned output (named as its staging is)."""
        return lease.lease_dir(control, f"{PARTITION_KEY}={partition}" if partition else UNPARTITIONED_STAGING)

    def name(self, partition: str) -> str:
        return self._folder(self.output, partition)

    def holds_output(self) -> bool:
        return holds_parquet_output(self.output)

    def output_datasets(self) -> list[OutputDataset]:
        """One dataset, the root: Hive-convention readers read its scores; the rejects are published in the same
        partitions under `_rejects/` (which those readers skip), so they have no root of their own to name."""
        return [OutputDataset(("scores", "rejects"), self.output, partition_key=PARTITION_KEY)]

    def lease_scopes(self, partition: str) -> tuple[LeaseScope, ...]:
        """One lease per partition folder, by its real path (symlinks resolved), beside the real output root:
        REAL_OUTPUT.staging/_leases/dt=D, so outputs that reach one folder by different paths share it."""
        real = storage.real_path(self.output)
        return (LeaseScope(self._folder(real, partition), self.lease_folder(f"{real}.staging", partition)),)

    def published_by(self, partition: str, run_id: str) -> list[str]:
        check = self.check(partition, count_rows=False)
        return [self.name(partition)] if check.manifest and check.manifest.run_id == run_id else []

    def describe(self) -> str:
        return f"parquet folders under {self.output} (dt=D/ with scores, _rejects/, _report/, and _SUCCESS last)"

    def partitions_found(self) -> list[str] | None:
        days = sorted(
            {
                p.split(f"/{PARTITION_KEY}=")[-1].split("/")[0]
                for p in storage.list_paths(storage.join(self.output, f"{PARTITION_KEY}=*", "*"))
            }
        )
        if days:
            return days
        unpartitioned = storage.exists(storage.join(self.output, SUCCESS_FILE)) or storage.list_paths(
            storage.join(self.output, "*.parquet")
        )
        return [] if unpartitioned else None

    def check_partitioning(self, dated: bool) -> None:
        """One root holds either dt= partitions or one unpartitioned output, never both: a run without --date into
        a dated root would publish every day's rows beside the partitions (a Hive reader sees them twice)."""
        unpartitioned = storage.exists(storage.join(self.output, SUCCESS_FILE)) or storage.list_paths(
            storage.join(self.output, "*.parquet")
        )
        if dated and unpartitioned:
            raise ConfigError(
                f"output {self.output} holds an unpartitioned output (no dt= folders): a run with --date or a "
                "backfill cannot write dt= partitions beside it; choose another output"
            )
        if not dated and storage.list_paths(storage.join(self.output, f"{PARTITION_KEY}=*", "*")):
            raise ConfigError(
                f"output {self.output} holds dt= partitions: a run without --date would publish beside them; pass "
                "--date, or choose another output"
            )

    def publish(self, partition, shards, facts, reports, fence) -> None:
        publish_partition(shards, self.name(partition), facts, reports, fence=fence)

    def check(self, partition: str, count_rows: bool = True) -> PartitionCheck:
        check = check_partition(self.name(partition), count_rows)
        if not check.complete:  # say so when there is no output at all
            state = self.state()
            if not state.exists:
                return PartitionCheck(self.name(partition), False, state.message)
        return check

    def published_summary(self, partition: str) -> dict | None:
        return published_summary(self.name(partition))

    def previous_summary(self, partition: str) -> dict | None:
        if not partition:  # an unpartitioned output's previous run is the one it replaces
            return published_summary(self.output)
        markers = storage.list_paths(storage.join(self.output, f"{PARTITION_KEY}=*", SUCCESS_FILE))
        key = f"{PARTITION_KEY}="
        earlier = sorted(p.rsplit("/", 1)[0] for p in markers if p.split(key)[-1].split("/")[0] < partition)
        return published_summary(earlier[-1]) if earlier else None
