"""A lease fences what is published, whatever path reached it: an Iceberg table's day (outputs that share a catalog
share its leases), a Parquet folder's real path; the fence holds at every table commit, and a run's cleanup leaves
alone what another run moved in. Real SQLite catalogs, leases on disk, interleavings forced at named steps."""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo

from pipeline import failpoints, storage
from pipeline.publish import lease
from pipeline.publish.iceberg import IcebergPublisher
from pipeline.publish.parquet import ParquetFolders
from pipeline.publish.publisher import PartitionFacts, Publisher, RowCounts
from tests.pipeline.publish.test_iceberg import stage, write_local
from tests.readers import assert_iceberg_readers_see
from transforms.io import Shard
from transforms.schema import RunSchema

DAY = "2026-03-01"


def _catalog(root) -> dict:
    return {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"}


def _tables(output, catalog: dict | None) -> IcebergPublisher:
    tables = IcebergPublisher(str(output), catalog)
    # Tables with optional columns, as test_iceberg's stage() writes its shards (the required ones are tested there).
    tables.prepare(Publisher.shard_schemas(tables, RunSchema()))
    return tables


def _directories(publisher, day: str = DAY) -> list[str]:
    return sorted(scope.directory for scope in publisher.lease_scopes(day))


# ------------------------------------------------------------------------------------------------ identity


def test_two_outputs_that_share_a_catalog_share_each_table_days_leases(tmp_path):
    shared = _catalog(tmp_path / "shared")
    a, b = _tables(tmp_path / "a", shared), _tables(tmp_path / "b", shared)
    assert _directories(a) == _directories(b)
    assert [s.fences for s in a.lease_scopes(DAY)] == [
        f"table sentiment.review_rejects (catalog sentiment) dt={DAY}",
        f"table sentiment.review_scores (catalog sentiment) dt={DAY}",
    ]
    # Beside each table's location, outside it (orphan-file removal sweeps the location) and outside both outputs.
    location = a.tables.catalog.load_table("sentiment.review_scores").location().removeprefix("file://")
    assert f"{location}.leases/dt={DAY}" in _directories(a)
    taken = lease.acquire_all(a.lease_scopes(DAY), "run-a", time.time(), 3600)
    with pytest.raises(lease.LeaseHeld, match=rf"table sentiment.review_rejects \(catalog sentiment\) dt={DAY} is "):
        lease.acquire_all(b.lease_scopes(DAY), "run-b", time.time(), 3600)
    assert lease.acquire_all(b.lease_scopes("2026-03-02"), "run-b", time.time(), 3600)  # another day is free
    lease.release_all(taken, "run-a")


def test_two_outputs_with_their_own_catalogs_do_not_share_leases(tmp_path):
    """The twin: embedded catalogs (one per output) publish different tables, so both runs go ahead."""
    a, b = _tables(tmp_path / "a", None), _tables(tmp_path / "b", None)
    assert set(_directories(a)).isdisjoint(_directories(b))
    lease.acquire_all(a.lease_scopes(DAY), "run-a", time.time(), 3600)
    assert lease.acquire_all(b.lease_scopes(DAY), "run-b", time.time(), 3600)


def test_a_parquet_output_reached_through_a_symlink_shares_the_real_folders_lease(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    by_link, by_real = ParquetFolders(str(tmp_path / "link")), ParquetFolders(str(real))
    assert _directories(by_link) == _directories(by_real) == [f"{real}.staging/_leases/dt={DAY}"]
    lease.acquire_all(by_real.lease_scopes(DAY), "run-a", time.time(), 3600)
    with pytest.raises(lease.LeaseHeld, match=rf"{real}/dt={DAY} is being written by run run-a"):
        lease.acquire_all(by_link.lease_scopes(DAY), "run-b", time.time(), 3600)


def test_two_parquet_outputs_that_are_different_folders_do_not_share_leases(tmp_path):
    """The twin: a folder beside it with a similar name is another partition."""
    a, b = ParquetFolders(str(tmp_path / "out")), ParquetFolders(str(tmp_path / "out2"))
    assert set(_directories(a)).isdisjoint(_directories(b))


# ------------------------------------------------------------------------------------------------ the fence


def _facts(properties: dict) -> PartitionFacts:
    rows = RowCounts(*(int(properties[f"rows-{k}"]) for k in ("read", "scored", "rejected")))
    return PartitionFacts(properties["run-id"], properties["model-version"], rows)


def _shards(scores: list[str], rejects: list[str]) -> list[Shard]:
    return [
        Shard(kind, path, pq.read_metadata(path).num_rows)
        for kind, paths in (("scores", scores), ("rejects", rejects))
        for path in paths
    ]


class _Publish:
    """One run's publish of DAY through the Publisher interface, fenced by the leases it took."""

    def __init__(self, tmp_path, output: str, catalog: dict, run: str, scored: int, take_over: bool = False):
        self.publisher = _tables(tmp_path / output, catalog)
        self.run = run
        self.held = lease.acquire_all(self.publisher.lease_scopes(DAY), run, time.time(), 3600, take_over)
        day, self.scores, self.rejects, self.properties = stage(
            tmp_path / output, DAY, run, scored, 1, write=write_local
        )
        self.shards = _shards(self.scores, self.rejects)  # counted while staged: a publish may move them

    def __call__(self) -> None:
        self.publisher.publish(
            DAY,
            self.shards,
            _facts(self.properties),
            {"summary.json": b"{}"},
            lambda: lease.fence_all(self.held, self.run),
        )


def _read(publisher: IcebergPublisher, kind: str) -> pa.Table:
    table = publisher.tables.catalog.load_table(publisher.tables.table_names[kind])
    return table.scan(row_filter=EqualTo("dt", DAY)).to_arrow()


def _assert_published_by(publisher: IcebergPublisher, run: str, scored: int) -> None:
    """verify's verdict, and what a reader gets: exactly that run's rows, every data file there."""
    check = publisher.check(DAY)
    assert check.complete and check.manifest.run_id == run, check.message
    assert _read(publisher, "scores").num_rows == scored and _read(publisher, "rejects").num_rows == 1
    for kind in ("scores", "rejects"):
        table = publisher.tables.catalog.load_table(publisher.tables.table_names[kind])
        for task in table.scan(row_filter=EqualTo("dt", DAY)).plan_files():
            assert os.path.isfile(task.file.file_path.removeprefix("file://")), task.file.file_path
            assert f"-{run}-" in os.path.basename(task.file.file_path)
    assert_iceberg_readers_see(publisher.tables.catalog_properties, DAY, scored, 1)


@pytest.fixture
def paused_after():
    """Runs `then` once when the publish reaches `step` (failpoints.ICEBERG_PUBLISH, without the `iceberg.`), where
    a test would stop a process at that failpoint."""
    with contextlib.ExitStack() as armed:

        def install(step: str, then) -> None:
            armed.enter_context(failpoints.armed(f"iceberg.{step}", lambda name: then(), times=1))

        yield install


def test_a_run_overtaken_between_its_two_table_commits_publishes_nothing_more(tmp_path, paused_after):
    """The issue's interleaving: run A has replaced the rejects table's day; before its scores commit, run B, through
    another output on the same catalog, takes the day over (--take-over-lease) and publishes it whole. A's scores
    commit is fenced (it used to land over B's, referencing files B's cleanup had deleted)."""
    shared = _catalog(tmp_path / "shared")
    a = _Publish(tmp_path, "a", shared, "run-a", 40)
    b = []

    def b_takes_the_day_over() -> None:
        b.append(_Publish(tmp_path, "b", shared, "run-b", 70, take_over=True))
        b[0]()

    paused_after("rejects-committed", b_takes_the_day_over)
    with pytest.raises(lease.LeaseLost, match=r"run run-a no longer holds the lease of table sentiment.review_"):
        a()
    _assert_published_by(a.publisher, "run-b", 70)


def test_a_run_that_keeps_its_lease_commits_both_tables(tmp_path, paused_after):
    """The twin: another output on the same catalog that asks for the day meanwhile is refused, and A publishes."""
    shared = _catalog(tmp_path / "shared")
    a = _Publish(tmp_path, "a", shared, "run-a", 40)
    refused = []

    def b_asks_for_the_day() -> None:
        with pytest.raises(lease.LeaseHeld) as e:
            _Publish(tmp_path, "b", shared, "run-b", 70)
        refused.append(str(e.value))

    paused_after("rejects-committed", b_asks_for_the_day)
    a()
    assert "is being written by run run-a" in refused[0]
    _assert_published_by(a.publisher, "run-a", 40)


def test_a_runs_cleanup_leaves_the_files_the_new_holder_moved_in(tmp_path, paused_after):
    """Run A committed both tables; before its cleanup, its lease lapsed and run B took the day and moved its shards
    in (not committed yet). A's cleanup must not delete them: B's commit would then reference missing files."""
    shared = _catalog(tmp_path / "shared")
    a = _Publish(tmp_path, "a", shared, "run-a", 40)
    b = []

    def b_moves_its_shards_in() -> None:
        b.append(_Publish(tmp_path, "b", shared, "run-b", 70, take_over=True))
        data = a.publisher.tables.catalog.load_table("sentiment.review_scores").location().removeprefix("file://")
        for path in b[0].scores:  # what B's publish does first (DayCommit._move_in), paused after it
            shutil.move(path, f"{data}/data/dt={DAY}/{os.path.basename(path)}")

    paused_after("scores-committed", b_moves_its_shards_in)
    a()  # published: A's commits landed before B took the day
    b[0]()  # B resumes: its shards are where it moved them
    _assert_published_by(a.publisher, "run-b", 70)


def test_a_runs_cleanup_removes_what_a_crashed_run_left_when_it_holds_the_day(tmp_path):
    """The twin: files a crashed run moved in (no snapshot references them) are removed by the next publish that
    holds the day."""
    shared = _catalog(tmp_path / "shared")
    crashed = _Publish(tmp_path, "c", shared, "run-crashed", 10)
    data = crashed.publisher.tables.catalog.load_table("sentiment.review_scores").location().removeprefix("file://")
    os.makedirs(f"{data}/data/dt={DAY}")
    for path in crashed.scores:
        shutil.move(path, f"{data}/data/dt={DAY}/{os.path.basename(path)}")
    lease.release_all(crashed.held, "run-crashed")
    a = _Publish(tmp_path, "a", shared, "run-a", 40)
    a()
    _assert_published_by(a.publisher, "run-a", 40)
    assert not [n for n in os.listdir(f"{data}/data/dt={DAY}") if "run-crashed" in n]


def test_a_partition_whose_second_lease_is_held_keeps_none_of_its_leases(tmp_path):
    """All of a day's leases or none: a run that took the rejects table's lease and finds the scores table's held
    (another config sharing only that table) gives the first back at once, so it blocks nobody."""
    tables = _tables(tmp_path / "a", _catalog(tmp_path / "shared"))
    rejects, scores = tables.lease_scopes(DAY)
    lease.acquire(scores.directory, "other-job", time.time(), 3600)
    with pytest.raises(lease.LeaseHeld, match="table sentiment.review_scores .* is being written by run other-job"):
        lease.acquire_all(tables.lease_scopes(DAY), "run-a", time.time(), 3600)
    assert lease.current(rejects.directory).released


def test_a_partition_whose_leases_are_free_takes_them_all(tmp_path):
    """The twin: both taken, one generation each, and given back together."""
    tables = _tables(tmp_path / "a", _catalog(tmp_path / "shared"))
    held = lease.acquire_all(tables.lease_scopes(DAY), "run-a", time.time(), 3600)
    assert sorted(held) == _directories(tables) and set(held.values()) == {0}
    lease.fence_all(held, "run-a")
    lease.release_all(held, "run-a")
    assert all(lease.current(directory).released for directory in held)


def _reports(publisher: IcebergPublisher) -> list[str]:
    """The runs with report files for the day."""
    folder = os.path.join(publisher.output, "reports", f"dt={DAY}")
    runs = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(run for run in runs if os.listdir(os.path.join(folder, run)))


def test_a_runs_report_cleanup_leaves_the_reports_of_the_run_that_took_the_day(tmp_path, paused_after):
    """Two runs into one output: A published; before it removed other runs' reports of the day, its lease lapsed and
    run B took the day and wrote its reports (a publish writes them before its commit). A used to delete them, so
    B's published day had no summary."""
    shared = _catalog(tmp_path / "shared")
    a = _Publish(tmp_path, "out", shared, "run-a", 40)
    b = []

    def b_writes_its_reports() -> None:
        b.append(_Publish(tmp_path, "out", shared, "run-b", 70, take_over=True))
        storage.write_atomically(
            os.path.join(a.publisher.output, "reports", f"dt={DAY}", "run-b", "summary.json"), b"{}"
        )

    paused_after("cleaned", b_writes_its_reports)
    a()
    assert _reports(a.publisher) == ["run-a", "run-b"]
    b[0]()
    assert _reports(a.publisher) == ["run-b"]  # B, holding the day, removed A's
    _assert_published_by(a.publisher, "run-b", 70)


def test_a_run_that_holds_the_day_removes_the_reports_of_earlier_runs(tmp_path):
    """The twin: the reports of the run whose snapshot is current are the day's only reports."""
    shared = _catalog(tmp_path / "shared")
    for run, scored in (("run-a", 40), ("run-b", 70)):
        publish = _Publish(tmp_path, "out", shared, run, scored)
        publish()
        lease.release_all(publish.held, run)
    assert _reports(publish.publisher) == ["run-b"]
