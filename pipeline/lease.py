"""Exclusive per-partition leases: at most one run writes a partition at a time.

A lease is a small JSON object `lease-GGGGGGGG.json` in `OUTPUT.staging/_leases/<partition>/`, created with the
store's create-if-absent primitive (local: O_EXCL; S3: `If-None-Match: *`; GCS: `ifGenerationMatch=0`). The highest
generation is the current lease. A run takes a free partition (no lease, or the current one released or expired, or
`take_over`) by creating the next generation: when two runs race for it only one create succeeds. Nothing is ever
overwritten except by its own holder (to renew or release it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from transforms.beam_compat import boto3_s3_client, filesystems_options

LEASES_DIR = "_leases"
_PREFIX, _SUFFIX = "lease-", ".json"


class LeaseHeld(RuntimeError):
    """Another live run holds the lease of a partition; the message names the run and when it started."""


class LeaseError(RuntimeError):
    """The lease store cannot be used (unsupported scheme, unreadable lease); the message names the path."""


def lease_dir(control_root: str, partition: str) -> str:
    """Where a partition's leases live: beside the output, never inside it."""
    return FileSystems.join(control_root, LEASES_DIR, f"dt={partition}" if partition else "_output")


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def create_if_absent(path: str, data: bytes) -> bool:
    """Creates path holding data unless it exists; True if this call created it. Atomic on every supported store:
    local disk (link(2), which fails on an existing name), S3 (`If-None-Match: *`), GCS (`ifGenerationMatch=0`)."""
    if "://" not in path:
        # The whole content is written first, then linked under the name: link(2) fails if the name exists, and a
        # reader never sees the lease half written (an O_EXCL create would show it empty for a moment).
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
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
    raise LeaseError(f"{path}: no create-if-absent for {scheme}:// here, so the partition lease cannot be taken")


def _s3_create_if_absent(path: str, data: bytes) -> bool:
    from apache_beam.options.pipeline_options import PipelineOptions
    from botocore.exceptions import ClientError

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
    from google.cloud import storage

    bucket, name = path[len("gs://") :].split("/", 1)
    try:
        storage.Client().bucket(bucket).blob(name).upload_from_string(data, if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


def _overwrite(path: str, data: bytes) -> None:
    """The holder rewrites its own lease (renew, release); nobody else writes this generation."""
    if "://" not in path:
        temp = f"{path}.tmp-{os.getpid()}"
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)
        return
    with FileSystems.create(path) as f:
        f.write(data)


@dataclass(frozen=True)
class Lease:
    """One generation of a partition's lease as read from the store."""

    path: str
    generation: int
    run_id: str
    started_at: float
    expires_at: float
    released: bool
    holder: str

    def live(self, now: float) -> bool:
        return not self.released and now < self.expires_at

    def describe(self) -> str:
        return (
            f"run {self.run_id} ({self.holder}), started {_stamp(self.started_at)}, expires {_stamp(self.expires_at)}"
        )


def _read(path: str, generation: int) -> Lease:
    try:
        with FileSystems.open(path) as f:
            data = json.loads(f.read().decode("utf-8"))
        return Lease(
            path,
            generation,
            data["run_id"],
            float(data["started_at"]),
            float(data["expires_at"]),
            bool(data.get("released", False)),
            data.get("holder", "?"),
        )
    except Exception as e:
        raise LeaseError(f"{path}: unreadable lease ({type(e).__name__}: {e})") from None


def _generations(directory: str) -> list[tuple[int, str]]:
    try:
        results = FileSystems.match([FileSystems.join(directory, f"{_PREFIX}*{_SUFFIX}")])
    except Exception:
        return []
    found = []
    for r in results:
        for m in r.metadata_list:
            name = m.path.rsplit("/", 1)[-1]
            digits = name[len(_PREFIX) : -len(_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), m.path))
    return sorted(found)


def current(control_root: str, partition: str) -> Lease | None:
    """The newest lease generation of a partition, or None when it never had one."""
    generations = _generations(lease_dir(control_root, partition))
    if not generations:
        return None
    generation, path = generations[-1]
    return _read(path, generation)


def _payload(run_id: str, started_at: float, expires_at: float, released: bool = False) -> bytes:
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    record = {
        "run_id": run_id,
        "started_at": started_at,
        "started": _stamp(started_at),
        "expires_at": expires_at,
        "expires": _stamp(expires_at),
        "released": released,
        "holder": holder,
    }
    return json.dumps(record, indent=2).encode("utf-8")


def acquire(
    control_root: str, partition: str, run_id: str, started_at: float, expiry_seconds: float, take_over: bool = False
) -> Lease:
    """Takes a partition's lease for run_id; raises LeaseHeld naming the live holder when another run has it."""
    directory = lease_dir(control_root, partition)
    name = f"dt={partition}" if partition else "the output"
    for _ in range(3):
        generations = _generations(directory)
        newest = _read(generations[-1][1], generations[-1][0]) if generations else None
        now = _now()
        if newest is not None and newest.run_id == run_id and not newest.released:
            return newest
        if newest is not None and newest.live(now) and not take_over:
            raise LeaseHeld(
                f"{name} is being written by {newest.describe()}; lease {newest.path} "
                f"(wait for it, or pass --take-over-lease if that run is dead)"
            )
        generation = newest.generation + 1 if newest is not None else 0
        path = FileSystems.join(directory, f"{_PREFIX}{generation:08d}{_SUFFIX}")
        if create_if_absent(path, _payload(run_id, started_at, now + expiry_seconds)):
            stale = [p for g, p in generations if g < generation]
            if stale:
                try:
                    FileSystems.delete(stale)
                except Exception:  # tidiness only: old generations are never read again
                    pass
            return _read(path, generation)
        # Another run created this generation between our listing and our create: read it and decide again.
    newest = current(control_root, partition)
    raise LeaseHeld(f"{name} is being written by {newest.describe() if newest else 'another run'}")


def renew(control_root: str, partition: str, run_id: str, expiry_seconds: float) -> Lease:
    """Extends the lease run_id holds (long backfills renew before each chunk); raises LeaseHeld if it was lost."""
    newest = current(control_root, partition)
    if newest is None or newest.run_id != run_id or newest.released:
        holder = newest.describe() if newest is not None else "nobody"
        raise LeaseHeld(f"run {run_id} lost the lease of {lease_dir(control_root, partition)}: now {holder}")
    _overwrite(newest.path, _payload(run_id, newest.started_at, _now() + expiry_seconds))
    return _read(newest.path, newest.generation)


def release(control_root: str, partition: str, run_id: str) -> bool:
    """Marks the partition's lease released if run_id holds it; True if it did. Safe to call twice."""
    try:
        newest = current(control_root, partition)
    except LeaseError:
        return False
    if newest is None or newest.run_id != run_id or newest.released:
        return False
    _overwrite(newest.path, _payload(run_id, newest.started_at, newest.expires_at, released=True))
    return True
