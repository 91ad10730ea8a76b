"""The publish protocol: shards moved in under run-unique names, a `_SUCCESS` manifest written last, then cleanup.

One protocol for local disk and object stores (`s3://`, `gs://`), built only from operations every store has:
create an object, rename (copy + delete on object stores) and delete. A partition is complete when `_SUCCESS`
exists and every data file it lists is there with the listed size and rows. Publishing never removes a file of the
previous complete partition before the new `_SUCCESS` is in place, so at every moment the old or the new complete
partition exists; a crash at any step leaves one of them, and the next publish removes what no manifest lists.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

SUCCESS_FILE = "_SUCCESS"
SUMMARY_FILE = "summary.json"
MANIFEST_FORMAT = "sentiment-partition-manifest/1"
DATA_PREFIXES = ("scores-", "rejects-")
_TEMP_MARK = ".tmp-"

# The steps of publish_partition, in order; tests fail the publish after each of them.
STEPS = ("moved", "reports", "manifest", "cleaned")


class ManifestError(ValueError):
    """A `_SUCCESS` that is not a readable manifest; the message names the file."""


def is_local(path: str) -> bool:
    return "://" not in path


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def write_atomically(path: str, data: bytes) -> None:
    """Writes a whole file that readers see either complete or not at all.

    Local disk: a temporary file in the same folder, then rename over the target. Object stores: one PUT, which
    is atomic by itself.
    """
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temp = f"{path}{_TEMP_MARK}{uuid.uuid4().hex[:8]}"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        return
    with FileSystems.create(path) as f:
        f.write(data)


def _sizes(pattern: str) -> dict[str, int]:
    """{basename: bytes} of the objects a pattern matches; empty when nothing does."""
    try:
        results = FileSystems.match([pattern])
    except Exception:  # Beam raises when a pattern matches nothing on some stores
        return {}
    return {_basename(m.path): m.size_in_bytes for r in results for m in r.metadata_list}


def _footer_rows(path: str) -> int:
    with FileSystems.open(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_manifest(partition_dir: str) -> dict | None:
    """The manifest in a partition's `_SUCCESS`, or None when there is no `_SUCCESS`."""
    path = FileSystems.join(partition_dir, SUCCESS_FILE)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path) as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except Exception as e:
        raise ManifestError(f"{path}: not a readable manifest ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "files" not in manifest:
        raise ManifestError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return manifest


@dataclass(frozen=True)
class PartitionCheck:
    """What `verify` found for one partition."""

    partition_dir: str
    complete: bool
    message: str
    manifest: dict | None = None


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
    on_disk = _sizes(FileSystems.join(partition_dir, "*"))
    counted = {"scores": 0, "rejects": 0}
    for entry in manifest["files"]:
        name, kind = entry["name"], entry["kind"]
        if name not in on_disk:
            return incomplete(
                f"{partition_dir}: {name} is missing (listed in {SUCCESS_FILE} with {entry['rows']} rows)"
            )
        if on_disk[name] != entry["bytes"]:
            return incomplete(
                f"{partition_dir}: {name} has {on_disk[name]} bytes, {SUCCESS_FILE} lists {entry['bytes']}"
            )
        if count_rows:
            try:
                rows = _footer_rows(FileSystems.join(partition_dir, name))
            except Exception as e:
                return incomplete(f"{partition_dir}: {name} is not readable Parquet ({type(e).__name__})")
            if rows != entry["rows"]:
                return incomplete(f"{partition_dir}: {name} holds {rows} rows, {SUCCESS_FILE} lists {entry['rows']}")
        counted[kind] = counted.get(kind, 0) + entry["rows"]
    rows = manifest["rows"]
    if counted["scores"] != rows["scored"] or counted["rejects"] != rows["rejected"]:
        return incomplete(f"{partition_dir}: the files listed in {SUCCESS_FILE} do not add up to its row counts")
    if rows["scored"] + rows["rejected"] != rows["read"]:
        return incomplete(f"{partition_dir}: {SUCCESS_FILE} says scored + rejected != read")
    listed = {e["name"] for e in manifest["files"]}
    stray = sorted(n for n in on_disk if n.startswith(DATA_PREFIXES) and n not in listed)
    note = f"; {len(stray)} unlisted shard(s) from an unfinished publish, ignored" if stray else ""
    message = (
        f"{partition_dir}: complete: {rows['scored']} scored + {rows['rejected']} rejected = {rows['read']} read "
        f"in {len(listed)} file(s), run {manifest['run_id']}, model {manifest['model_version']}{note}"
    )
    return PartitionCheck(partition_dir, True, message, manifest)


def is_complete(partition_dir: str) -> bool:
    """Whether a partition is published and whole (sizes checked, footers not read): what --skip-existing asks."""
    return check_partition(partition_dir, count_rows=False).complete


def _move(source: str, destination: str) -> None:
    if is_local(source):
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        os.replace(source, destination)
    else:
        FileSystems.rename([source], [destination])


def publish_partition(
    shards: list[dict],
    final_dir: str,
    manifest: dict,
    reports: dict[str, bytes],
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Publishes staged shards into final_dir; returns the manifest written to `_SUCCESS`.

    shards: {"kind", "path", "rows"} staged Parquet files under run-unique names. manifest: the run's facts
    (run_id, model_version, partition, rows). reports: summary.json and report files, written before `_SUCCESS`.
    Retrying after a crash at any step is safe: a shard already moved is not moved again.
    """
    on_step = on_step or (lambda step: None)
    names = {}
    for shard in shards:
        name = _basename(shard["path"])
        destination = FileSystems.join(final_dir, name)
        if FileSystems.exists(shard["path"]):
            _move(shard["path"], destination)
        elif not FileSystems.exists(destination):
            raise FileNotFoundError(f"{shard['path']}: staged shard is gone and was not published")
        names[name] = shard
    on_step("moved")

    for name, data in reports.items():
        write_atomically(FileSystems.join(final_dir, name), data)
    on_step("reports")

    sizes = _sizes(FileSystems.join(final_dir, "*"))
    files = [
        {"name": name, "kind": shard["kind"], "rows": int(shard["rows"]), "bytes": int(sizes[name])}
        for name, shard in sorted(names.items())
    ]
    manifest = {
        "format": MANIFEST_FORMAT,
        **manifest,
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    write_atomically(FileSystems.join(final_dir, SUCCESS_FILE), json.dumps(manifest, indent=2).encode("utf-8"))
    on_step("manifest")

    remove_unlisted(final_dir, {f["name"] for f in files})
    on_step("cleaned")
    return manifest


def remove_unlisted(partition_dir: str, listed: set[str]) -> list[str]:
    """Deletes data shards no manifest lists (earlier runs', or an unfinished publish's) and temporary files.

    Only files this job writes (`scores-*`, `rejects-*`, `*.tmp-*`) directly in the partition are touched: never a
    folder, never anything else a user keeps there.
    """
    stale = [
        FileSystems.join(partition_dir, name)
        for name in _sizes(FileSystems.join(partition_dir, "*"))
        if (name.startswith(DATA_PREFIXES) and name not in listed) or _TEMP_MARK in name
    ]
    if stale:
        FileSystems.delete(stale)
    return stale
