"""The lease fences the publish: a run that no longer holds the newest generation publishes nothing, expiry is judged
by the store's clock, and a publish interleaved with another run's never leaves a manifest without its files."""

from __future__ import annotations

import dataclasses
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import failpoints, storage
from pipeline.publish import lease
from pipeline.publish.commit import CommitPartition
from pipeline.publish.parquet import ParquetFolders, check_partition, publish_partition, read_manifest, shard_name
from pipeline.publish.publisher import PartitionFacts, RowCounts
from tests.conftest import clean_processes, shard_paths
from transforms.io import Shard
from transforms.schema import RunSchema

DATE = "2026-03-01"
SCHEMA = RunSchema()


def _stage(staging: str, run: str, ids: list[int]) -> list[dict]:
    """A scores shard and an empty rejects shard of the run's schema, as the writers leave them."""
    os.makedirs(staging, exist_ok=True)
    scores = pa.table(
        {
            "review_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array([1] * len(ids), pa.int64()),
            "sentiment_score": pa.array([0.5] * len(ids), pa.float32()),
            "model_version": pa.array(["m"] * len(ids)),
        },
        schema=SCHEMA.scores_schema(),
    )
    paths = {kind: os.path.join(staging, f"{kind}-{run}-0000.parquet") for kind in ("scores", "rejects")}
    pq.write_table(scores, paths["scores"])
    pq.write_table(SCHEMA.rejects_schema().empty_table(), paths["rejects"])
    return [Shard("scores", paths["scores"], len(ids)), Shard("rejects", paths["rejects"], 0)]


def _facts(run: str, rows: int) -> PartitionFacts:
    return PartitionFacts(run, "m", RowCounts(rows, rows, 0), partition=DATE)


def test_a_publish_overtaken_by_another_run_removes_its_files_and_leaves_the_other_complete(tmp_path):
    """The interleaving that once left a `_SUCCESS` listing no data files: run A is paused after its shards and
    reports are in place, run B takes the partition over and publishes, then A resumes."""
    control, partition = str(tmp_path / "out.staging"), str(tmp_path / "out" / f"dt={DATE}")
    a = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-a", time.time(), 3600)

    def b_takes_over(name):
        b = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-b", time.time(), 3600, take_over=True)
        shards = _stage(str(tmp_path / "staging-b"), "run-b", [7, 8, 9])
        publish_partition(
            shards, partition, _facts("run-b", 3), {"summary.json": b"{}"},
            fence=lambda: lease.fence(ParquetFolders.lease_folder(control, DATE), "run-b", b.generation),
        )  # fmt: skip

    shards = _stage(str(tmp_path / "staging-a"), "run-a", [1, 2])
    with (
        failpoints.armed("parquet.reports", b_takes_over, times=1),
        pytest.raises(lease.LeaseLost, match="run run-a no longer holds the lease of .*dt=2026-03-01"),
    ):
        publish_partition(
            shards, partition, _facts("run-a", 2), {"summary.json": b"{}"},
            fence=lambda: lease.fence(ParquetFolders.lease_folder(control, DATE), "run-a", a.generation),
        )  # fmt: skip
    check = check_partition(partition)
    assert check.complete and check.manifest.run_id == "run-b", check.message
    assert not [n for n in os.listdir(partition) if "run-a" in n]
    assert sorted(os.listdir(os.path.join(partition, "_report"))) == ["run-b"]
    assert not [n for n in os.listdir(os.path.join(partition, "_rejects")) if "run-a" in n]


def test_a_publish_whose_lease_is_still_the_newest_goes_through(tmp_path):
    """The twin: the fence passes for the holder of the newest generation."""
    control, partition = str(tmp_path / "out.staging"), str(tmp_path / "out" / f"dt={DATE}")
    held = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-a", time.time(), 3600)
    shards = _stage(str(tmp_path / "staging-a"), "run-a", [1, 2])
    publish_partition(
        shards,
        partition,
        _facts("run-a", 2),
        {},
        fence=lambda: lease.fence(ParquetFolders.lease_folder(control, DATE), "run-a", held.generation),
    )
    assert read_manifest(partition)["run_id"] == "run-a"


def _commit(tmp_path, leases: dict) -> CommitPartition:
    info = {
        "run_id": "run-a",
        "started_at": time.time(),
        "model_version": "m",
        "model_dir": "model",
        "review_files": {DATE: []},
        "customer_files": [],
        "leases": {
            DATE: {ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE): g for g in leases.values()}
        },
        "lease_expiry_seconds": 60.0,
    }
    schemas = {"scores": SCHEMA.scores_schema(), "rejects": SCHEMA.rejects_schema()}
    return CommitPartition(
        ParquetFolders(str(tmp_path / "out")), str(tmp_path / "out.staging" / "run-a"), info, {DATE: 2}, schemas, 0.2
    )


def _records(tmp_path) -> tuple[str, list]:
    staged = _stage(str(tmp_path / "out.staging" / "run-a" / f"dt={DATE}"), "run-a", [1, 2])
    return DATE, [None, *staged]


def test_a_run_whose_lease_lapsed_and_was_taken_publishes_nothing(tmp_path):
    """Expiry on the store's clock, driven by an injected store time: run A's lease lapsed, run B took it, and A's
    commit step (the real DoFn) refuses the partition naming the lost lease."""
    control = str(tmp_path / "out.staging")
    a = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-a", time.time(), 60)
    b = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-b", time.time(), 3600, now=a.expires_at + 1)
    assert b.generation == a.generation + 1
    [result] = _commit(tmp_path, {DATE: a.generation}).process(_records(tmp_path), customers_summary={})
    assert result.status == "failed" and "run run-a lost the lease" in result.message
    assert not os.path.exists(tmp_path / "out" / f"dt={DATE}" / "_SUCCESS")
    assert (
        lease.current(ParquetFolders.lease_folder(control, DATE)).run_id == "run-b"
        and not lease.current(ParquetFolders.lease_folder(control, DATE)).released
    )


def test_a_run_whose_lease_lapsed_but_was_not_taken_renews_it_and_publishes(tmp_path):
    """The twin: a lapsed lease nobody took is still the newest generation: the commit renews it and publishes."""
    control = str(tmp_path / "out.staging")
    a = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-a", time.time(), 60)
    [result] = _commit(tmp_path, {DATE: a.generation}).process(_records(tmp_path), customers_summary={})
    assert result.status == "published", result.message
    assert check_partition(str(tmp_path / "out" / f"dt={DATE}")).complete
    assert lease.current(ParquetFolders.lease_folder(control, DATE)).released  # given back once published


def test_expiry_is_judged_by_the_stores_clock_not_the_holders(tmp_path, monkeypatch):
    """A holder whose host clock runs 10 h behind: comparing its clock with ours would call its fresh lease expired
    (the old rule: expires_at = the holder's time.time() + expiry). The store stamps the lease when it is written."""
    control = str(tmp_path / "out.staging")
    real_time = time.time
    with monkeypatch.context() as m:
        m.setattr(lease.time, "time", lambda: real_time() - 10 * 3600)
        lease.acquire(ParquetFolders.lease_folder(control, DATE), "skewed-holder", time.time(), 6 * 3600)
    with pytest.raises(lease.LeaseHeld, match="run skewed-holder"):
        lease.acquire(ParquetFolders.lease_folder(control, DATE), "other", real_time(), 6 * 3600)
    assert lease.store_now(control) == pytest.approx(real_time(), abs=120)


# ---------------------------------------------------------------------------------------------------------------------
# A write that fails while publishing (a full disk, a file size limit): the previous partition stays, nothing is
# left half written, the lease is given back, and the reason names the path.


def _commit_under_file_size_limit(tmp_path, records, limit: int, results) -> None:
    """In a forked child: the kernel refuses writes past `limit` bytes (EFBIG, as ENOSPC would on a full disk)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    control = str(tmp_path / "out.staging")
    held = lease.current(ParquetFolders.lease_folder(control, DATE))
    outputs = list(_commit(tmp_path, {DATE: held.generation}).process(records, customers_summary={}))
    results.put([dataclasses.replace(o, summary=None) for o in outputs])


@pytest.mark.parametrize("limit", [1_000, 10**9], ids=["writes-fail", "twin-writes-fit"])
def test_a_write_that_fails_while_publishing_refuses_the_partition_and_keeps_the_previous_one(tmp_path, limit):
    control, partition = str(tmp_path / "out.staging"), str(tmp_path / "out" / f"dt={DATE}")
    old = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-old", time.time(), 3600)
    old_shards = _stage(str(tmp_path / "staging-old"), "run-old", [1, 2, 3])
    publish_partition(old_shards, partition, _facts("run-old", 3), {"summary.json": b"{}"}, fence=None)
    lease.release(ParquetFolders.lease_folder(control, DATE), "run-old")
    assert old.generation == 0
    lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-a", time.time(), 3600)
    records = _records(tmp_path)  # run-a's shards are staged before the limit applies
    context = clean_processes()
    results = context.Queue()
    child = context.Process(target=_commit_under_file_size_limit, args=(tmp_path, records, limit, results))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    [result] = results.get(timeout=10)
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert lease.current(ParquetFolders.lease_folder(control, DATE)).released  # given back either way
    if limit == 1_000:
        assert result.status == "failed"
        assert "publishing failed" in result.message and f"{partition}/_report/run-a/" in result.message
        assert "File too large" in result.message
        check = check_partition(partition)
        assert check.complete and check.manifest.run_id == "run-old"  # the previous partition, intact
        assert not [n for n in os.listdir(partition) if "run-a" in n]
    else:
        assert result.status == "published", result.message
        assert read_manifest(partition)["run_id"] == "run-a"


# ---------------------------------------------------------------------------------------------------------------------
# A newest lease that cannot be read (a torn write, a disk fault, a hand edit)


def _corrupt_newest_lease(control: str) -> lease.Lease:
    held = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-dead", time.time(), 3600)
    with open(held.path, "w", encoding="utf-8") as f:
        f.write('{"run_id": "run-dead", "star')
    return held


def test_a_corrupt_newest_lease_is_taken_over_with_take_over(tmp_path):
    """--take-over-lease is the way out when the holder is dead: it needs nothing from the newest lease but its
    generation (from its name), so an unreadable one does not block the day (it used to: LeaseError, exit 1)."""
    control = str(tmp_path / "out.staging")
    dead = _corrupt_newest_lease(control)
    taken = lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-b", time.time(), 3600, take_over=True)
    assert taken.generation == dead.generation + 1
    assert lease.current(ParquetFolders.lease_folder(control, DATE)).run_id == "run-b"
    assert lease.fence(ParquetFolders.lease_folder(control, DATE), "run-b", taken.generation).run_id == "run-b"


def test_a_corrupt_newest_lease_without_take_over_is_refused_naming_it_and_the_way_out(tmp_path):
    """The twin: without --take-over-lease nobody can tell whether its holder lives, so the day is refused, naming the
    file and the flag."""
    control = str(tmp_path / "out.staging")
    dead = _corrupt_newest_lease(control)
    with pytest.raises(lease.LeaseError, match=rf"{dead.path}: unreadable lease .*--take-over-lease"):
        lease.acquire(ParquetFolders.lease_folder(control, DATE), "run-b", time.time(), 3600)
    assert [p.name for p in (tmp_path / "out.staging" / "_leases" / f"dt={DATE}").iterdir()] == [
        os.path.basename(dead.path)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# A run's cleanup after its manifest never removes what a run that took the partition over moved in


def _move_in(shards: list[dict], partition: str) -> None:
    """What publish_partition does first: the staged shards moved into the partition under their names."""
    for shard in shards:
        storage.move(shard.path, os.path.join(partition, shard_name(shard.kind, shard.path)))


def test_a_cleanup_after_the_lease_was_taken_leaves_the_new_holders_shards(tmp_path):
    """Run A wrote its manifest; before its cleanup its lease lapsed, run B took the partition and moved its shards
    in. A's cleanup used to delete them (unlisted by A's manifest), and B's publish then failed on its own shards."""
    directory, partition = (
        ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE),
        str(tmp_path / "out" / f"dt={DATE}"),
    )
    a = lease.acquire(directory, "run-a", time.time(), 3600)
    b = {}

    def b_moves_in(name):
        b["lease"] = lease.acquire(directory, "run-b", time.time(), 3600, take_over=True)
        b["shards"] = _stage(str(tmp_path / "staging-b"), "run-b", [7, 8, 9])
        _move_in(b["shards"], partition)

    shards = _stage(str(tmp_path / "staging-a"), "run-a", [1, 2])
    with failpoints.armed("parquet.manifest", b_moves_in, times=1):
        publish_partition(
            shards, partition, _facts("run-a", 2), {"summary.json": b"{}"},
            fence=lambda: lease.fence(directory, "run-a", a.generation),
        )  # fmt: skip
    publish_partition(  # B resumes: its shards are where it moved them
        b["shards"], partition, _facts("run-b", 3), {"summary.json": b"{}"},
        fence=lambda: lease.fence(directory, "run-b", b["lease"].generation),
    )  # fmt: skip
    check = check_partition(partition)
    assert check.complete and check.manifest.run_id == "run-b", check.message
    assert pq.read_table(shard_paths(partition, "scores"))["review_id"].to_pylist() == [7, 8, 9]
    assert not [n for n in os.listdir(partition) if "run-a" in n]  # B's cleanup removed A's


def test_a_cleanup_by_the_holder_removes_the_previous_runs_shards(tmp_path):
    """The twin: a run that still holds the partition removes what its manifest does not list."""
    directory, partition = (
        ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE),
        str(tmp_path / "out" / f"dt={DATE}"),
    )
    publish_partition(_stage(str(tmp_path / "staging-old"), "run-old", [1]), partition, _facts("run-old", 1), {})
    a = lease.acquire(directory, "run-a", time.time(), 3600)
    publish_partition(
        _stage(str(tmp_path / "staging-a"), "run-a", [1, 2]), partition, _facts("run-a", 2), {},
        fence=lambda: lease.fence(directory, "run-a", a.generation),
    )  # fmt: skip
    assert check_partition(partition).manifest.run_id == "run-a"
    assert not [n for n in os.listdir(partition) if "run-old" in n]


# ---------------------------------------------------------------------------------------------------------------------
# The launcher renews while the pipeline runs, and the pipeline's commit step releases: a release is never undone


def test_a_renewal_that_read_the_lease_before_its_release_does_not_undo_the_release(tmp_path, monkeypatch):
    """The renewal thread read the lease (held), then the commit step released it, then the renewal wrote it back:
    a rewrite of the whole record used to mark it held again, blocking the next run until it expired."""
    directory = ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE)
    held = lease.acquire(directory, "run-a", time.time(), 3600)
    real_holder = lease._holder

    def read_then_released_meanwhile(*args):
        found = real_holder(*args)
        monkeypatch.setattr(lease, "_holder", real_holder)
        assert lease.release(directory, "run-a")  # the commit step, between the renewal's read and its write
        return found

    monkeypatch.setattr(lease, "_holder", read_then_released_meanwhile)
    lease.renew(directory, "run-a", 3600, held.generation)
    assert lease.current(directory).released
    assert lease.acquire(directory, "run-b", time.time(), 3600).run_id == "run-b"  # no need to wait or take over


def test_a_renewal_of_a_lease_still_held_extends_it(tmp_path):
    """The twin: with no release meanwhile, the renewal keeps the lease held, from the time it was written."""
    directory = ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE)
    held = lease.acquire(directory, "run-a", time.time(), 60)
    renewed = lease.renew(directory, "run-a", 3600, held.generation)
    assert not lease.current(directory).released and renewed.expires_at >= held.modified_at + 3600
    with pytest.raises(lease.LeaseHeld, match="run run-a"):
        lease.acquire(directory, "run-b", time.time(), 3600, now=held.expires_at + 1)


# ---------------------------------------------------------------------------------------------------------------------
# A job nobody waits on (--no-wait) renews its own leases while it scores (lease.KeepLeases, a step of the graph)


def _keeper(tmp_path, monkeypatch, expiry: float = 60):
    directory = ParquetFolders.lease_folder(str(tmp_path / "out.staging"), DATE)
    held = lease.acquire(directory, "run-a", time.time(), expiry)
    clock, renewals, real = [1000.0], [], lease.renew_all
    monkeypatch.setattr(lease, "_RENEWED_AT", {})
    monkeypatch.setattr(lease, "renew_all", lambda *args: renewals.append(args) or real(*args))
    keep = lease.KeepLeases({DATE: {directory: held.generation}}, "run-a", expiry, clock=lambda: clock[0])
    return directory, keep, clock, renewals


def test_a_job_renews_its_leases_every_quarter_of_their_expiry_while_it_scores(tmp_path, monkeypatch):
    directory, keep, clock, renewals = _keeper(tmp_path, monkeypatch)
    element = (DATE, "a batch of scores")
    assert keep(element) is element  # the first batch starts the count: the launcher renewed just before the job
    clock[0] += 14.9
    keep(element)
    assert renewals == []
    clock[0] += 0.2
    assert keep(element) is element
    assert len(renewals) == 1 and not lease.current(directory).released
    clock[0] += 15.5
    keep(element)
    assert len(renewals) == 2


def test_a_job_whose_lease_was_taken_passes_its_batches_on_and_leaves_the_refusal_to_the_commit(
    tmp_path, monkeypatch, caplog
):
    """The twin: a lost lease is logged once, never raised here (the commit step's fence refuses the partition)."""
    directory, keep, clock, renewals = _keeper(tmp_path, monkeypatch)
    element = (DATE, "a batch of scores")
    keep(element)
    lease.acquire(directory, "run-b", time.time(), 3600, take_over=True)
    for _ in range(3):
        clock[0] += 20
        assert keep(element) is element
    assert len(renewals) == 1 and caplog.text.count("could not renew a lease: run run-a lost the lease") == 1
    assert lease.current(directory).run_id == "run-b"
