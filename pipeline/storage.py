"""Filesystem primitives every output format and the lease share: paths, atomic writes, JSON, listing, deletes."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import JobError

LOCAL_SCHEME = "file://"
# Marks a temporary file written beside its target (write_atomically); a publish removes any it finds.
TEMP_MARK = ".tmp-"


class StorageError(JobError, OSError):
    """A write, move or delete failed (a full disk, an unwritable folder); the message names the path."""


class Unsupported(JobError, ValueError):
    """The store of a path lacks a primitive the job needs; the message names the path."""


def utc_stamp(seconds: float | None = None) -> str:
    """A moment as the records the job stores spell it (manifests, leases, run summaries): ISO 8601 UTC to the
    second, 2026-12-07T14:07:03Z; now when no seconds since the epoch are given."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _named(path: str, error: OSError) -> StorageError:
    return StorageError(error.errno, f"{path}: {error.strerror or error}")


def is_remote(path: str) -> bool:
    """Whether path is on an object store (s3://, gs://) rather than local disk (a plain path or file://)."""
    return "://" in path and not path.startswith(LOCAL_SCHEME)


def _native(path: str) -> str:
    """The path as os and Beam's FileSystems take it: Beam has no file:// filesystem, so a file:// URL (as pyiceberg
    writes local locations) is handed on as the plain path it names."""
    return path.removeprefix(LOCAL_SCHEME)


def real_path(path: str) -> str:
    """What a path names, the same however it was reached: on local disk (also `file://`) the absolute path with
    every symlink resolved; on an object store the path without a trailing slash (it has no links)."""
    if is_remote(path):
        return path.rstrip("/")
    return os.path.realpath(_native(path))


def join(*parts: str) -> str:
    if parts[0].startswith(LOCAL_SCHEME):
        return LOCAL_SCHEME + FileSystems.join(_native(parts[0]), *parts[1:])
    return FileSystems.join(*parts)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def list_paths(pattern: str, strict: bool = False) -> list[str]:
    """The files a pattern matches; empty when nothing does. Some stores raise instead of matching nothing, so a
    failed listing is empty too, unless strict: then a failure other than a missing folder raises StorageError."""
    prefix = LOCAL_SCHEME if pattern.startswith(LOCAL_SCHEME) else ""  # paths come back spelt as the pattern is
    try:
        return [prefix + m.path for r in FileSystems.match([_native(pattern)]) for m in r.metadata_list]
    except Exception as e:
        if not strict or (not is_remote(pattern) and not os.path.isdir(_native(pattern).rsplit("/", 1)[0])):
            return []
        raise StorageError(f"{pattern}: cannot list ({type(e).__name__}: {e})") from None


def sizes(pattern: str) -> dict[str, int]:
    """{basename: bytes} of the files a pattern matches."""
    try:
        results = FileSystems.match([_native(pattern)])
    except Exception:
        return {}
    return {basename(m.path): m.size_in_bytes for r in results for m in r.metadata_list}


def exists(path: str) -> bool:
    return FileSystems.exists(_native(path))


def write_atomically(path: str, data: bytes) -> None:
    """Writes a whole file that readers see either complete or not at all.

    Local disk: a temporary file in the same folder, flushed to disk, then renamed over the target; on any failure
    (a full disk, an unwritable folder) the temporary file is removed and the error raised. Object stores: one PUT,
    which is atomic by itself.
    """
    if is_remote(path):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    path = _native(path)
    temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as e:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise _named(path, e) from e
        raise


def write_json(path: str, record: dict) -> None:
    write_atomically(path, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))


def read_json(path: str) -> dict | None:
    """The JSON object in a file, or None when it is missing or not readable JSON."""
    try:
        with FileSystems.open(_native(path)) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


def move(source: str, destination: str) -> None:
    """Renames a file (an object store copies, then deletes); the destination's folder is made on local disk."""
    try:
        if not is_remote(source):
            os.makedirs(os.path.dirname(os.path.abspath(_native(destination))), exist_ok=True)
            os.replace(_native(source), _native(destination))
        else:
            FileSystems.rename([source], [destination])
    except OSError as e:
        raise _named(destination, e) from e


def delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete([_native(p) for p in paths])


def delete_tree(folder: str) -> None:
    """Deletes a folder and everything below it (on an object store: every object under its prefix)."""
    if not is_remote(folder):
        shutil.rmtree(_native(folder), ignore_errors=True)
        return
    delete(list_paths(join(folder, "**")))


def sync_to_disk(paths: list[str], folders: list[str]) -> None:
    """Flushes files and then their folders' entries to the disk (local only: an object store's PUT is durable
    when it returns), so a manifest written after this never lists a file that power loss could leave short."""
    for path in [*paths, *(f for f in folders if is_remote(f) or os.path.isdir(_native(f)))]:
        if is_remote(path):
            continue
        fd = os.open(_native(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_if_absent(path: str, data: bytes) -> bool:
    """Creates path holding data unless it exists; True if this call created it. Atomic on every supported store:
    local disk (link(2), which fails on an existing name), S3 (`If-None-Match: *`), GCS (`ifGenerationMatch=0`)."""
    if not is_remote(path):
        # The whole content is written first, then linked under the name: link(2) fails if the name exists, and a
        # reader never sees the lease half written (an O_EXCL create would show it empty for a moment).
        path = _native(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
        with open(temp, "wb") as f:
            f.write(data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True
    scheme = path.split("://", 1)[0]
    if scheme == "s3":
        return _s3_create_if_absent(path, data)
    if scheme == "gs":
        return _gcs_create_if_absent(path, data)
    raise Unsupported(f"{path}: no create-if-absent for {scheme}:// here")


def _s3_create_if_absent(path: str, data: bytes) -> bool:
    from apache_beam.options.pipeline_options import PipelineOptions
    from botocore.exceptions import ClientError

    from transforms.beam_compat import boto3_s3_client, filesystems_options

    bucket, key = path[len("s3://") :].split("/", 1)
    client = boto3_s3_client(filesystems_options() or PipelineOptions([]))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


def _gcs_create_if_absent(path: str, data: bytes) -> bool:  # pragma: no cover - no GCS on this machine
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage as gcs

    bucket, name = path[len("gs://") :].split("/", 1)
    try:
        gcs.Client().bucket(bucket).blob(name).upload_from_string(data, if_generation_match=0)
    except PreconditionFailed:
        return False
    return True
