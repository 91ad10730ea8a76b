"""Exclusive leases on what a run publishes: at most one run writes a table's day (or a folder) at a time.

A lease fences what is published, whatever path reached it: the publisher names each lease of a partition and the
folder it lives in (Publisher.lease_scopes): an Iceberg table's day beside the table's location (outputs that share
a catalog share it), a Parquet folder's real path (symlinks resolved). A lease is a small JSON object
`lease-GGGGGGGG.json` in that folder, created with the store's create-if-absent primitive (local: link(2) of a fully
written temporary file, which fails on an existing name; S3: `If-None-Match: *`; GCS: `ifGenerationMatch=0`;
pipeline/storage.py `create_if_absent`). The highest generation is the current lease. A run takes a free lease (none,
or the current one released or expired, or `take_over`, which needs only the newest generation's number, so an
unreadable lease does not block it) by creating the next generation: when two runs race for it only one create
succeeds. Nothing is ever overwritten except by its own holder (to renew or release it), and a release is a mark
created beside the generation (`lease-GGGGGGGG.released`) that no renewal can undo.

Expiry is judged by the store's clock: a lease lapses `expiry_seconds` after its object was last written (taken or
renewed), by the object's modification time against the time the store gives a probe object written now, never by
comparing two hosts' clocks. The generation is a fencing token: a run checks it still holds the newest generation
immediately before each commit that publishes (`fence`), so a run whose lease lapsed and was taken over publishes
nothing more.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from pipeline import storage
from pipeline.errors import ExitCode, JobError

_LOG = logging.getLogger(__name__)
LEASES_DIR = "_leases"
_PREFIX, _SUFFIX = "lease-", ".json"


class LeaseHeld(JobError, RuntimeError):
    """Another live run holds the lease of a partition; the message names the run and when it started."""

    exit_code = ExitCode.LEASE_HELD


class LeaseLost(LeaseHeld):
    """The run no longer holds the newest generation of a partition's lease (it lapsed and another run took it, or
    it was taken over): the partition is not published by this run."""

    exit_code = ExitCode.FAILED


class LeaseError(JobError, RuntimeError):
    """The lease store cannot be used (unsupported scheme, unreadable lease); the message names the path."""


def lease_dir(root: str, name: str) -> str:
    """The lease folder `name` below a root that holds leases: ROOT/_leases/NAME (a publisher names its partitions'
    leases; pipeline/publish/parquet.py)."""
    return FileSystems.join(root, LEASES_DIR, name)


def store_now(directory: str) -> float:
    """The store's clock: the modification time the store gives a probe object written now (on local disk the
    filesystem's, on S3 or GCS the service's), so expiry never compares this host's clock with another's."""
    probe = FileSystems.join(directory, f".clock-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"clock")  # not empty: Beam's S3 upload of an empty object is a malformed multipart upload
        stamped = [m.last_updated_in_seconds for r in FileSystems.match([probe]) for m in r.metadata_list]
    except Exception as e:
        raise LeaseError(f"{directory}: cannot read the store's clock ({type(e).__name__}: {e})") from None
    finally:
        try:
            FileSystems.delete([probe])
        except Exception:  # the probe is tiny, hidden, and never read: tidiness only
            pass
    if not stamped:
        raise LeaseError(f"{directory}: the store gave no modification time for {probe}")
    return float(stamped[0])


def _create(path: str, data: bytes) -> bool:
    try:
        return storage.create_if_absent(path, data)
    except storage.Unsupported as e:
        raise LeaseError(f"{e}, so the partition lease cannot be taken") from None


@dataclass(frozen=True)
class Lease:
    """One generation of a partition's lease as read from the store."""

    path: str
    generation: int
    run_id: str
    started_at: float
    expiry_seconds: float
    modified_at: float  # the store's modification time of the lease object: when it was taken or last renewed
    released: bool
    holder: str
    fences: str = ""  # what the lease fences, as its publisher names it

    @property
    def expires_at(self) -> float:
        return self.modified_at + self.expiry_seconds

    def live(self, now: float) -> bool:
        """Whether the lease still holds at `now`, a time on the store's clock (store_now)."""
        return not self.released and now < self.expires_at

    def describe(self) -> str:
        started, expires = storage.utc_stamp(self.started_at), storage.utc_stamp(self.expires_at)
        return f"run {self.run_id} ({self.holder}), started {started}, expires {expires}"


def _release_mark(path: str) -> str:
    """`lease-GGGGGGGG.released` beside a generation's file: created once when its run gives it back, never removed
    or overwritten, so a renewal that read the lease just before (the launcher's, while the commit step releases
    it) cannot mark it held again by rewriting the record."""
    return path[: -len(_SUFFIX)] + ".released"


def _read(path: str, generation: int) -> Lease:
    try:
        with FileSystems.open(path) as f:
            data = json.loads(f.read().decode("utf-8"))
        modified = [m.last_updated_in_seconds for r in FileSystems.match([path]) for m in r.metadata_list]
        started = float(data["started_at"])
        # Leases written before expiry_seconds was recorded carry only an absolute expires_at.
        expiry = float(data.get("expiry_seconds", float(data.get("expires_at", started)) - started))
        return Lease(
            path,
            generation,
            data["run_id"],
            started,
            expiry,
            float(modified[0]) if modified else started,
            bool(data.get("released", False)) or storage.exists(_release_mark(path)),
            data.get("holder", "?"),
            data.get("fences", ""),
        )
    except Exception as e:
        raise LeaseError(f"{path}: unreadable lease ({type(e).__name__}: {e})") from None


def _generations(directory: str) -> list[tuple[int, str]]:
    """The lease generations in a partition's folder, oldest first; an empty list when it has none. A listing that
    fails is a LeaseError, never "no lease": that would let a run take a partition another run holds."""
    try:
        listed = storage.list_paths(FileSystems.join(directory, f"{_PREFIX}*{_SUFFIX}"), strict=True)
    except storage.StorageError as e:
        raise LeaseError(str(e)) from None
    found = []
    for path in listed:
        digits = path.rsplit("/", 1)[-1][len(_PREFIX) : -len(_SUFFIX)]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def _read_newest(generations: list[tuple[int, str]], take_over: bool) -> Lease | None:
    """The newest generation, read; None when there is none, or when it cannot be read and the run takes the lease
    over (taking over needs only the newest generation's number, which its name gives). Without take_over an
    unreadable newest lease is a LeaseError: nobody can tell whether its holder still writes."""
    if not generations:
        return None
    generation, path = generations[-1]
    try:
        return _read(path, generation)
    except LeaseError as e:
        if take_over:
            return None
        raise LeaseError(f"{e}; if no run is writing this partition, pass --take-over-lease") from None


def current(directory: str) -> Lease | None:
    """The newest lease generation in a lease folder, or None when it never had one."""
    generations = _generations(directory)
    if not generations:
        return None
    generation, path = generations[-1]
    return _read(path, generation)


def _payload(run_id: str, started_at: float, expiry_seconds: float, fences: str, released: bool = False) -> bytes:
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    record = {
        "run_id": run_id,
        "fences": fences,
        "started_at": started_at,
        "started": storage.utc_stamp(started_at),
        "expiry_seconds": expiry_seconds,
        "released": released,
        "holder": holder,
    }
    return json.dumps(record, indent=2).encode("utf-8")


def acquire(
    directory: str,
    run_id: str,
    started_at: float,
    expiry_seconds: float,
    take_over: bool = False,
    now: float | None = None,
    name: str | None = None,
) -> Lease:
    """Takes the lease in `directory` (a Publisher's LeaseScope) for run_id; raises LeaseHeld naming the live holder
    when another run has it. name: what the lease fences, for messages and the lease record.

    now: the store's time (store_now) unless given; tests give it to see a lease lapse without waiting.
    """
    name = name or directory
    for _ in range(3):
        generations = _generations(directory)
        newest = _read_newest(generations, take_over)
        if newest is not None and newest.run_id == run_id and not newest.released:
            return newest
        if newest is not None and not take_over and newest.live(store_now(directory) if now is None else now):
            raise LeaseHeld(
                f"{name} is being written by {newest.describe()}; lease {newest.path} "
                f"(wait for it, or pass --take-over-lease if that run is dead)"
            )
        generation = generations[-1][0] + 1 if generations else 0
        path = FileSystems.join(directory, f"{_PREFIX}{generation:08d}{_SUFFIX}")
        # Older generations stay: deleting them while a rival lists the folder let the rival see no lease at all and
        # create generation 0 again, so both runs "won" (a few hundred bytes a generation; a partition has few).
        if _create(path, _payload(run_id, started_at, expiry_seconds, name)):
            return _read(path, generation)
        # Another run created this generation between our listing and our create: read it and decide again.
    newest = current(directory)
    raise LeaseHeld(f"{name} is being written by {newest.describe() if newest else 'another run'}")


def _holder(directory: str, run_id: str, generation: int | None) -> tuple[Lease | None, str, str]:
    """(the newest lease, "", what it fences) when run_id holds it (at `generation`, when given); else (None, who
    holds it now, what it fences). A newer generation is a lost lease whether or not it can be read (a take-over of
    an unreadable lease leaves one behind)."""
    generations = _generations(directory)
    if not generations:
        return None, "nobody", ""
    newest_generation, path = generations[-1]
    if generation is not None and newest_generation != generation:
        try:
            newer = _read(path, newest_generation)
        except LeaseError:
            return None, f"generation {newest_generation}, unreadable", ""
        return None, newer.describe(), newer.fences
    newest = _read(path, newest_generation)
    if newest.run_id != run_id or newest.released:
        return None, newest.describe(), newest.fences
    return newest, "", newest.fences


def fence(directory: str, run_id: str, generation: int | None, name: str | None = None) -> Lease:
    """The lease when run_id still holds `generation` and it is the newest; raises LeaseLost otherwise. Called
    immediately before each commit that publishes: the generation is the run's fencing token."""
    newest, holder, fences = _holder(directory, run_id, generation)
    if newest is None:
        raise LeaseLost(
            f"run {run_id} no longer holds the lease of {fences or name or directory} (its generation {generation}; "
            f"now {holder}): not published by this run"
        )
    return newest


def renew(
    directory: str, run_id: str, expiry_seconds: float, generation: int | None = None, name: str | None = None
) -> Lease:
    """Extends the lease run_id holds (while a run lives, and before each commit); raises LeaseLost if it was lost.
    With a generation, only that generation counts as held (the fencing token the run was given)."""
    newest, holder, fences = _holder(directory, run_id, generation)
    if newest is None:
        raise LeaseLost(f"run {run_id} lost the lease of {fences or name or directory}: now {holder}")
    storage.write_atomically(newest.path, _payload(run_id, newest.started_at, expiry_seconds, newest.fences))
    return _read(newest.path, newest.generation)


def release(directory: str, run_id: str) -> bool:
    """Marks the lease released if run_id holds it; True if it did. Safe to call twice."""
    try:
        newest = current(directory)
    except LeaseError:
        return False
    if newest is None or newest.run_id != run_id or newest.released:
        return False
    _create(_release_mark(newest.path), f"released by run {run_id}".encode())
    record = _payload(run_id, newest.started_at, newest.expiry_seconds, newest.fences, released=True)
    storage.write_atomically(newest.path, record)  # for people reading the record; the mark is what counts
    return True


# ---------------------------------------------------------------------------------------------------------------------
# A partition's leases: one per LeaseScope its publisher names (pipeline/publish/publisher.py), held as
# {lease folder: generation}, the run's fencing tokens for the partition.


def acquire_all(
    scopes,
    run_id: str,
    started_at: float,
    expiry_seconds: float,
    take_over: bool = False,
    now: float | None = None,
) -> dict[str, int]:
    """Takes every lease of a partition (its publisher's LeaseScopes: .directory, .fences), in a fixed order, or
    none: those taken are given back when one is held by another run."""
    held: dict[str, int] = {}
    try:
        for scope in sorted(scopes, key=lambda s: s.directory):
            if scope.directory in held:
                continue
            taken = acquire(scope.directory, run_id, started_at, expiry_seconds, take_over, now, scope.fences)
            held[scope.directory] = taken.generation
    except BaseException:
        release_all(held, run_id)
        raise
    return held


def fence_all(held: dict[str, int], run_id: str, name: str | None = None) -> None:
    """Raises LeaseLost unless run_id still holds the newest generation of every lease of the partition."""
    for directory, generation in sorted(held.items()):
        fence(directory, run_id, generation, name)


def renew_all(held: dict[str, int], run_id: str, expiry_seconds: float, name: str | None = None) -> None:
    for directory, generation in sorted(held.items()):
        renew(directory, run_id, expiry_seconds, generation, name)


def release_all(held, run_id: str) -> None:
    """Gives back every lease of the partition run_id holds (a dict or list of lease folders)."""
    for directory in sorted(held):
        release(directory, run_id)


def released_by(held, run_id: str) -> bool:
    """Whether run_id has given back every one of these leases itself (it published or refused the partition)."""
    try:
        newest = [current(directory) for directory in held]
    except LeaseError:
        return False
    return all(n is not None and n.run_id == run_id and n.released for n in newest)


# When each worker process last renewed a run's partition (KeepLeases), by (run_id, partition).
_RENEWED_AT: dict[tuple[str, str], float] = {}


class KeepLeases:
    """Renews a run's leases from inside the pipeline while it scores, so a job nobody waits on (--no-wait on a
    remote runner) keeps its days however long it runs, as the launcher's renewal does for a run it waits on.

    Called on every (partition, batch) element of a step the scoring runs through (pipeline/run/graph.py); passes
    the element on unchanged. It renews the element's partition when a quarter of the expiry has passed since this
    worker process last did (its first element only starts the count: the launcher took or renewed the lease just
    before the job started). A lost lease is logged once and left to the commit step's fence.
    clock: monotonic seconds; tests inject one.
    """

    def __init__(self, leases: dict, run_id: str, expiry_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._leases, self._run_id, self._every, self._clock = leases, run_id, expiry_seconds / 4, clock

    def __call__(self, element):
        partition = element[0]
        key, now = (self._run_id, partition), self._clock()
        last = _RENEWED_AT.setdefault(key, now)
        if now - last >= self._every:
            _RENEWED_AT[key] = now
            try:
                renew_all(self._leases.get(partition, {}), self._run_id, self._every * 4)
            except (LeaseHeld, LeaseError) as e:
                _RENEWED_AT[key] = float("inf")  # not again: the commit step refuses the partition
                _LOG.warning("could not renew a lease: %s", e)
        return element
