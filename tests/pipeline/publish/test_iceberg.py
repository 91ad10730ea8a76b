"""The Iceberg output on a real pyiceberg SQL catalog (SQLite): publish, rerun, time travel, crashes, races, S3."""

import datetime as dt_module
import glob
import json
import multiprocessing
import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo

from pipeline import failpoints
from pipeline.failpoints import ICEBERG_PUBLISH, FailpointHit
from pipeline.publish.iceberg import IcebergPublisher
from pipeline.publish.iceberg_commit import DayCommit, IcebergPublishError
from pipeline.publish.iceberg_tables import PARTITION_COLUMN, IcebergSchemaError, OutputTables, retry_racing_creation
from pipeline.publish.publisher import PartitionFacts, RowCounts
from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, s3_client
from tests.readers import assert_iceberg_readers_see
from transforms.io import with_partition_day
from transforms.schema import RunSchema

# The job's own output schemas (integer ids, the default feature columns).
SCORES, REJECTS = RunSchema().scores_schema(), RunSchema().rejects_schema()
DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]


def _scores(n: int, model: str, start: int = 0) -> pa.Table:
    ids = pa.array(range(start, start + n), pa.int64())
    score = pc.divide(pc.cast(pc.bit_wise_and(ids, 1023), pa.float64()), 1024.0)
    return pa.table([ids, pc.multiply(ids, 7), pc.cast(score, pa.float32()), pa.array([model] * n)], schema=SCORES)


def _rejects(n: int, start: int = 0) -> pa.Table:
    ids = pa.array(range(start, start + n), pa.int64())
    text = pa.array(["x"] * n, pa.string())
    age = pa.array([30.0] * n, pa.float64())
    return pa.table([ids, ids, pa.array(["missing_customer"] * n), text, text, age, age], schema=REJECTS)


def stage(root, day, run, scored, rejected, model="v1", shards=2, shard_day=None, write=pq.write_table):
    """Writes a run's shards as the pipeline's writers would (with `dt`); returns publish()'s arguments."""
    files = {"scores": [], "rejects": []}
    per = -(-scored // shards)
    for i in range(shards):
        table = _scores(min(per, max(scored - i * per, 0)), model, start=i * per)
        path = f"{root}/staging/{run}/scores-{run}-{i:05d}.parquet"
        write(with_partition_day(table, PARTITION_COLUMN, shard_day or day), path)
        files["scores"].append(path)
    path = f"{root}/staging/{run}/rejects-{run}-00000.parquet"
    write(with_partition_day(_rejects(rejected, start=10**6), PARTITION_COLUMN, day), path)
    files["rejects"].append(path)
    properties = {
        "run-id": run,
        "model-version": model,
        "rows-read": str(scored + rejected),
        "rows-scored": str(scored),
        "rows-rejected": str(rejected),
    }
    return day, files["scores"], files["rejects"], properties


def write_local(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)


def day_rows(output: DayCommit, kind: str, day: str, snapshot_id=None) -> pa.Table:
    table = output.catalog.load_table(output.table_names[kind])
    return table.scan(row_filter=EqualTo("dt", day), snapshot_id=snapshot_id).to_arrow().sort_by("review_id")


def current_snapshot(output: DayCommit, kind: str) -> int | None:
    snapshot = output.catalog.load_table(output.table_names[kind]).current_snapshot()
    return snapshot.snapshot_id if snapshot else None


def data_files(output: DayCommit, kind: str, day: str) -> set[str]:
    location = output.catalog.load_table(output.table_names[kind]).location().removeprefix("file://")
    folder = f"{location}/data/dt={day}"
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


@pytest.fixture
def output(tmp_path):
    out = DayCommit(OutputTables(str(tmp_path / "out")))
    out.prepare({"scores": SCORES, "rejects": REJECTS})
    return out


# ------------------------------------------------------------------------------------------- publish and read


def test_the_default_catalog_is_sqlite_at_output_catalog_db_with_the_warehouse_beside_it(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 5, 1, write=write_local)
    output.publish(day, scores, rejects, props)
    assert (tmp_path / "out" / "catalog.db").is_file()
    location = output.catalog.load_table("sentiment.review_scores").location()
    assert location.startswith(f"file://{tmp_path / 'out' / 'warehouse'}/")
    assert data_files(output, "scores", day) == {os.path.basename(p) for p in scores}
    assert not any(os.path.exists(p) for p in scores + rejects)  # moved in, not copied


def test_an_object_store_output_without_a_catalog_is_refused():
    with pytest.raises(ValueError, match=r"output s3://bucket/out: the embedded Iceberg catalog .* set catalog:"):
        OutputTables("s3://bucket/out")


def test_three_days_are_published_and_read_back_with_their_snapshot_facts(tmp_path, output):
    for n, day in enumerate(DAYS):
        output.publish(*stage(tmp_path, day, f"run-{n}", 100 + n, n, write=write_local))
    for n, day in enumerate(DAYS):
        scores = day_rows(output, "scores", day)
        assert scores.num_rows == 100 + n
        want = _scores(100 + n, "v1")
        assert scores.select(want.column_names).cast(want.schema).equals(want)
        assert set(scores["dt"].to_pylist()) == {dt_module.date.fromisoformat(day)}
        assert day_rows(output, "rejects", day).num_rows == n
        complete, message = output.tables.verify(day)
        assert complete, message
        assert f"{100 + n} scored + {n} rejected = {100 + 2 * n} read" in message and f"run run-{n}" in message
        assert output.tables.published_model_version(day) == "v1"
    table = output.catalog.load_table("sentiment.review_scores")
    assert len(table.metadata.snapshots) == 3
    summary = table.current_snapshot().summary.additional_properties
    assert summary["sentiment.run-id"] == "run-2" and summary["sentiment.partition"] == DAYS[2]
    assert summary["sentiment.rows-read"] == "104" and summary["sentiment.model-version"] == "v1"


def test_a_day_never_published_is_incomplete(tmp_path, output):
    output.publish(*stage(tmp_path, DAYS[0], "run-a", 10, 0, write=write_local))
    complete, message = output.tables.verify(DAYS[1])
    assert not complete
    assert message == f"{DAYS[1]}: table sentiment.review_scores has no snapshot for this day: not published"
    assert output.tables.published_model_version(DAYS[1]) is None
    empty = tmp_path / "empty"
    assert OutputTables(str(empty)).verify(DAYS[0]) == (
        False,
        f"{empty}: no such output (no Iceberg catalog at {empty / 'catalog.db'})",
    )
    assert not empty.exists()  # verify reads only


def test_a_day_without_rejects_publishes_an_empty_rejects_day(tmp_path, output):
    output.publish(*stage(tmp_path, DAYS[0], "run-a", 10, 0, write=write_local))
    assert day_rows(output, "rejects", DAYS[0]).num_rows == 0
    assert output.tables.verify(DAYS[0])[0]
    assert data_files(output, "rejects", DAYS[0]) == set()  # the empty shard is not added


# ------------------------------------------------------------------------------------------- rerun, time travel


def test_a_rerun_replaces_the_day_in_one_snapshot_and_the_previous_night_stays_readable(tmp_path, output):
    for n, day in enumerate(DAYS):
        output.publish(*stage(tmp_path, day, f"run-{n}", 50, 2, write=write_local))
    before = current_snapshot(output, "scores")
    old_files = data_files(output, "scores", DAYS[1])
    snapshots = len(output.catalog.load_table("sentiment.review_scores").metadata.snapshots)

    output.publish(*stage(tmp_path, DAYS[1], "run-again", 50, 2, model="v2", write=write_local))

    table = output.catalog.load_table("sentiment.review_scores")
    assert len(table.metadata.snapshots) == snapshots + 1
    assert table.current_snapshot().parent_snapshot_id == before
    for day in DAYS:
        assert day_rows(output, "scores", day).num_rows == 50  # replaced, not doubled
    assert set(day_rows(output, "scores", DAYS[1])["model_version"].to_pylist()) == {"v2"}
    assert set(day_rows(output, "scores", DAYS[0])["model_version"].to_pylist()) == {"v1"}
    assert output.tables.published_model_version(DAYS[1]) == "v2"
    # Time travel: the night before the rerun, by snapshot id, from files the cleanup kept.
    previous = day_rows(output, "scores", DAYS[1], snapshot_id=before)
    assert previous.num_rows == 50 and set(previous["model_version"].to_pylist()) == {"v1"}
    assert old_files < data_files(output, "scores", DAYS[1])


def test_rolling_back_a_bad_night_restores_the_previous_facts(tmp_path, output):
    output.publish(*stage(tmp_path, DAYS[0], "run-good", 30, 1, write=write_local))
    good = {kind: current_snapshot(output, kind) for kind in ("scores", "rejects")}
    output.publish(*stage(tmp_path, DAYS[0], "run-bad", 20, 3, model="v-bad", write=write_local))
    assert output.tables.published_model_version(DAYS[0]) == "v-bad"
    for kind, snapshot_id in good.items():
        table = output.catalog.load_table(output.table_names[kind])
        table.manage_snapshots().rollback_to_snapshot(snapshot_id).commit()
    assert output.tables.published_model_version(DAYS[0]) == "v1"
    assert day_rows(output, "scores", DAYS[0]).num_rows == 30


def test_a_shard_of_another_day_is_refused_and_the_table_is_unchanged(tmp_path, output):
    output.publish(*stage(tmp_path, DAYS[0], "run-a", 10, 1, write=write_local))
    before = current_snapshot(output, "scores")
    args = stage(tmp_path, DAYS[0], "run-b", 10, 1, shard_day=DAYS[1], write=write_local)
    with pytest.raises(IcebergPublishError, match=rf"scores-run-b-00000.parquet: its dt column holds {DAYS[1]}, not"):
        output.publish(*args)
    assert current_snapshot(output, "scores") == before
    assert output.tables.verify(DAYS[0])[0]


def test_counts_that_do_not_match_the_shards_are_refused(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 10, 1, write=write_local)
    with pytest.raises(
        IcebergPublishError, match=r"review_scores, 2026-03-01: the shards hold 10 rows, the run says 9"
    ):
        output.publish(day, scores, rejects, {**props, "rows-scored": "9"})
    assert current_snapshot(output, "scores") is None


def test_properties_without_the_run_facts_are_refused(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 10, 1, write=write_local)
    del props["model-version"]
    with pytest.raises(ValueError, match="properties lack model-version"):
        output.publish(day, scores, rejects, props)


# ------------------------------------------------------------------------------------------- snapshot kinds


def _operation(output: DayCommit, kind: str) -> str:
    return output.catalog.load_table(output.table_names[kind]).current_snapshot().summary.operation.value


def test_a_new_day_is_an_append_snapshot_and_only_a_rescore_an_overwrite(tmp_path, output):
    """Spark streaming reads refuse overwrite snapshots and incremental append scans skip them: a day the table does
    not hold yet only adds files, so it is an append; a rescore replaces files, so it is an overwrite."""
    output.publish(*stage(tmp_path, DAYS[0], "run-0", 40, 2, write=write_local))
    assert {kind: _operation(output, kind) for kind in ("scores", "rejects")} == {
        "scores": "append",
        "rejects": "append",
    }
    first = current_snapshot(output, "scores")
    output.publish(*stage(tmp_path, DAYS[1], "run-1", 30, 1, write=write_local))
    assert _operation(output, "scores") == "append"
    table = output.catalog.load_table("sentiment.review_scores")
    new_rows = table.incremental_append_scan(from_snapshot_id_exclusive=first).to_arrow()
    assert new_rows.num_rows == 30 and set(new_rows["dt"].to_pylist()) == {dt_module.date.fromisoformat(DAYS[1])}

    output.publish(*stage(tmp_path, DAYS[0], "run-again", 35, 3, model="v2", write=write_local))
    assert {kind: _operation(output, kind) for kind in ("scores", "rejects")} == {
        "scores": "overwrite",
        "rejects": "overwrite",
    }
    assert day_rows(output, "scores", DAYS[0]).num_rows == 35 and day_rows(output, "scores", DAYS[1]).num_rows == 30
    assert output.tables.verify(DAYS[0]) == (
        True,
        f"{DAYS[0]}: complete: 35 scored + 3 rejected = 38 read in 3 file(s), run run-again, model v2",
    )


def test_an_append_of_a_day_another_run_published_meanwhile_is_refused_not_doubled(tmp_path, output):
    """The twin: an append is checked like an overwrite. Another run publishes the same (new) day between this
    run's planning and its commit (what the lease prevents): pyiceberg's commit retry must not rebase the append over
    it, so this run is refused and the day holds the other run's rows alone."""
    other = DayCommit(OutputTables(output.output))
    late = stage(tmp_path, DAYS[0], "run-late", 20, 1, write=write_local)
    meanwhile = stage(tmp_path, DAYS[0], "run-meanwhile", 25, 2, write=write_local)

    def publish_meanwhile(name):
        other.publish(*meanwhile)

    with (
        failpoints.armed("iceberg.scores-planned", publish_meanwhile, times=1),
        pytest.raises(IcebergPublishError, match="review_scores, 2026-03-01: another publish changed this day"),
    ):
        output.publish(*late)
    assert day_rows(output, "scores", DAYS[0]).num_rows == 25
    assert output.tables.verify(DAYS[0]) == (
        True,
        f"{DAYS[0]}: complete: 25 scored + 2 rejected = 27 read in 3 file(s), run run-meanwhile, model v1",
    )


# Never null: the scores' ids, score, model version and day (null ids and invalid scores are rejected rows); the
# rejects' reason, detail and day. The rejects' ids and raw inputs can be null: they are why a row was rejected.
REQUIRED = {
    "scores": ["review_id", "customer_id", "sentiment_score", "model_version", "dt"],
    "rejects": ["reason", "detail", "dt"],
}


def _publisher_shards(tmp_path):
    """The job's Iceberg publisher, its tables prepared from the shard schemas the writers use, and a write function
    that stages shards in those schemas."""
    publisher = IcebergPublisher(str(tmp_path / "out"))
    schemas = publisher.shard_schemas(RunSchema())
    publisher.prepare(schemas)

    def write(table, path):
        kind = "scores" if os.path.basename(path).startswith("scores-") else "rejects"
        write_local(table.cast(schemas[kind]), path)

    return publisher, schemas, write


def test_columns_that_are_never_null_are_required_in_the_tables_and_the_rows_read_back(tmp_path):
    publisher, _, write = _publisher_shards(tmp_path)
    commit = publisher.day_commit()
    for kind, required in REQUIRED.items():
        schema = commit.catalog.load_table(commit.table_names[kind]).schema()
        assert sorted(f.name for f in schema.fields if f.required) == sorted(required), kind
    commit.publish(*stage(tmp_path, DAYS[0], "run-a", 30, 2, write=write))
    scores = day_rows(commit, "scores", DAYS[0])
    want = _scores(30, "v1")
    assert scores.select(want.column_names).cast(want.schema).equals(want)
    assert day_rows(commit, "rejects", DAYS[0]).num_rows == 2
    assert commit.tables.verify(DAYS[0])[0]


def test_a_shard_with_a_nullable_column_the_table_requires_is_refused_naming_it(tmp_path):
    """The twin: a shard that could hold nulls where the table requires values is refused before anything moves."""
    publisher, _, write = _publisher_shards(tmp_path)
    commit = publisher.day_commit()
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 10, 1, write=write)
    write_local(pq.read_table(scores[0]).cast(with_partition_day(_scores(0, "v1"), "dt", day).schema), scores[0])
    with pytest.raises(
        IcebergSchemaError, match=r"table sentiment.review_scores: column review_id is optional in /.*, required in"
    ):
        commit.publish(day, scores, rejects, props)
    assert all(os.path.exists(p) for p in scores)
    assert current_snapshot(commit, "scores") is None


# ------------------------------------------------------------------------------------------- snapshot expiry


def _expire_all_but_current(output: DayCommit) -> None:
    """Routine table maintenance as an operator runs it: expire every snapshot but the current one."""
    for kind in ("scores", "rejects"):
        table = output.catalog.load_table(output.table_names[kind])
        table.maintenance.expire_snapshots().older_than(dt_module.datetime.now() + dt_module.timedelta(days=1)).commit()
        assert len(output.catalog.load_table(output.table_names[kind]).metadata.snapshots) == 1


def test_a_days_facts_survive_snapshot_expiry(tmp_path, output):
    """verify and --skip-existing read a day's run, model version and rows; expiring the snapshot that published
    the day (routine maintenance) must not un-publish it."""
    output.publish(*stage(tmp_path, DAYS[0], "run-0", 40, 2, write=write_local))
    output.publish(*stage(tmp_path, DAYS[1], "run-1", 30, 1, model="v2", write=write_local))
    output.publish(*stage(tmp_path, DAYS[0], "run-again", 35, 3, write=write_local))
    _expire_all_but_current(output)
    table = output.catalog.load_table("sentiment.review_scores")
    recorded = json.loads(table.properties[f"sentiment.day.{DAYS[0]}"])  # readable by any Iceberg client
    assert recorded["run-id"] == "run-again" and recorded["snapshot-id"] == str(table.current_snapshot().snapshot_id)
    assert output.tables.verify(DAYS[1]) == (
        True,
        f"{DAYS[1]}: complete: 30 scored + 1 rejected = 31 read in 3 file(s), run run-1, model v2",
    )
    assert output.tables.verify(DAYS[0]) == (
        True,
        f"{DAYS[0]}: complete: 35 scored + 3 rejected = 38 read in 3 file(s), run run-again, model v1",
    )
    assert output.tables.published_model_version(DAYS[1]) == "v2"
    check = IcebergPublisher(output.output).check(DAYS[1])
    assert check.complete and check.manifest == PartitionFacts("run-1", "v2", RowCounts(read=31, scored=30, rejected=1))
    assert day_rows(output, "scores", DAYS[1]).num_rows == 30 and day_rows(output, "scores", DAYS[0]).num_rows == 35


def test_after_expiry_a_day_whose_rows_differ_from_its_facts_is_still_incomplete(tmp_path, output):
    """The twin: the facts that survive expiry are checked against the rows, not trusted. A day deleted by hand
    after expiry is incomplete, and a day never published stays not published."""
    output.publish(*stage(tmp_path, DAYS[0], "run-0", 40, 2, write=write_local))
    output.publish(*stage(tmp_path, DAYS[1], "run-1", 30, 1, write=write_local))
    _expire_all_but_current(output)
    output.catalog.load_table("sentiment.review_scores").delete(f"dt = '{DAYS[0]}'")
    assert output.tables.verify(DAYS[0]) == (
        False,
        f"{DAYS[0]}: table sentiment.review_scores holds 0 rows for the day, its snapshot says 40",
    )
    assert output.tables.published_model_version(DAYS[0]) is None
    assert output.tables.verify(DAYS[2]) == (
        False,
        f"{DAYS[2]}: table sentiment.review_scores has no snapshot for this day: not published",
    )


def test_a_rollback_past_a_rescore_restores_the_facts_of_the_snapshot_rolled_back_to(tmp_path, output):
    """The facts recorded by a commit that a rollback undid are not the day's facts any more."""
    output.publish(*stage(tmp_path, DAYS[0], "run-good", 30, 1, write=write_local))
    good = {kind: current_snapshot(output, kind) for kind in ("scores", "rejects")}
    output.publish(*stage(tmp_path, DAYS[1], "run-other", 10, 0, write=write_local))
    output.publish(*stage(tmp_path, DAYS[0], "run-bad", 20, 3, model="v-bad", write=write_local))
    for kind, snapshot_id in good.items():
        output.catalog.load_table(output.table_names[kind]).manage_snapshots().rollback_to_snapshot(
            snapshot_id
        ).commit()
    assert output.tables.verify(DAYS[0])[1].endswith("run run-good, model v1")
    assert output.tables.verify(DAYS[1])[0] is False  # rolled back past it: not in the table any more


class Clock:
    """An injected clock: now() is the real time plus what the test advanced it by."""

    def __init__(self):
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def _snapshot_ids(output: DayCommit, kind: str) -> list[int]:
    return [s.snapshot_id for s in output.catalog.load_table(output.table_names[kind]).metadata.snapshots]


def _retained(tmp_path, retention_days):
    """An output with snapshot retention and an injected clock, three publishes in: two days, one rescored."""
    clock = Clock()
    out = DayCommit(OutputTables(str(tmp_path / "out")), retention_days, clock)
    out.prepare({"scores": SCORES, "rejects": REJECTS})
    out.publish(*stage(tmp_path, DAYS[0], "run-0", 40, 2, write=write_local))
    first_files = data_files(out, "scores", DAYS[0])
    out.publish(*stage(tmp_path, DAYS[1], "run-1", 30, 1, write=write_local))
    out.publish(*stage(tmp_path, DAYS[0], "run-again", 35, 3, model="v2", write=write_local))
    return out, clock, first_files


def test_retention_expires_snapshots_older_than_the_setting_after_a_publish_and_keeps_the_facts(tmp_path):
    out, clock, first_files = _retained(tmp_path, retention_days=1)
    rescore_files = data_files(out, "scores", DAYS[0]) - first_files
    clock.ahead = 2 * 86400  # two days later: every snapshot so far is older than a day
    out.publish(*stage(tmp_path, DAYS[2], "run-2", 20, 0, write=write_local))

    for kind in ("scores", "rejects"):
        assert _snapshot_ids(out, kind) == [current_snapshot(out, kind)]
    for day, line in (
        (DAYS[0], "35 scored + 3 rejected = 38 read in 3 file(s), run run-again, model v2"),
        (DAYS[1], "30 scored + 1 rejected = 31 read in 3 file(s), run run-1, model v1"),
        (DAYS[2], "20 scored + 0 rejected = 20 read in 2 file(s), run run-2, model v1"),
    ):
        assert out.tables.verify(day) == (True, f"{day}: complete: {line}")
    assert out.tables.published_model_version(DAYS[0]) == "v2"
    assert [day_rows(out, "scores", day).num_rows for day in DAYS] == [35, 30, 20]
    # The first night of DAYS[0] was only in expired snapshots: its files are gone, the rescore's are there.
    assert data_files(out, "scores", DAYS[0]) == rescore_files


def _metadata_files(out: DayCommit, kind: str) -> list[str]:
    location = out.catalog.load_table(out.table_names[kind]).location().removeprefix("file://")
    return sorted(glob.glob(f"{location}/metadata/*.metadata.json"))


@pytest.mark.parametrize("retention_days", [None, 1], ids=["no-retention", "retention"])
def test_a_retention_also_bounds_the_metadata_files_and_the_tables_still_read(tmp_path, retention_days):
    """Every commit writes a new metadata file; with a retention the tables keep the newest N previous ones (N=2
    here), and readers that open the current one (pyiceberg, polars) read every day. The twin, without a retention:
    nothing is deleted, one file a commit stays."""
    out = DayCommit(OutputTables(str(tmp_path / "out")), retention_days, Clock(), metadata_files_kept=2)
    out.prepare({"scores": SCORES, "rejects": REJECTS})
    for i, day in enumerate(DAYS):
        out.publish(*stage(tmp_path, day, f"run-{i}", 10 + i, 1, write=write_local))
    counts = {kind: len(_metadata_files(out, kind)) for kind in ("scores", "rejects")}
    if retention_days is None:
        assert counts == {"scores": 1 + len(DAYS), "rejects": 1 + len(DAYS)}  # the create, then one a publish
    else:
        assert counts == {"scores": 3, "rejects": 3}  # the current file and 2 previous ones
    for i, day in enumerate(DAYS):
        assert out.tables.verify(day)[0], out.tables.verify(day)
        assert_iceberg_readers_see(out.tables.catalog_properties, day, 10 + i, 1)


def test_expiry_keeps_the_snapshot_current_at_the_cutoff_so_time_travel_reaches_back_that_far(tmp_path):
    out, _, first_files = _retained(tmp_path, retention_days=1)
    table = out.catalog.load_table("sentiment.review_scores")
    rescore = table.current_snapshot()
    out.publish(*stage(tmp_path, DAYS[2], "run-2", 20, 0, write=write_local))  # within retention: nothing expires
    assert len(_snapshot_ids(out, "scores")) == 4
    cutoff = dt_module.datetime.fromtimestamp((rescore.timestamp_ms + 1) / 1000, dt_module.UTC)
    assert out.expire_snapshots(cutoff) == {"scores": 2, "rejects": 2}
    assert _snapshot_ids(out, "scores") == [rescore.snapshot_id, current_snapshot(out, "scores")]
    assert day_rows(out, "scores", DAYS[0], snapshot_id=rescore.snapshot_id).num_rows == 35  # as it was then
    assert day_rows(out, "scores", DAYS[2], snapshot_id=rescore.snapshot_id).num_rows == 0
    # The first night's files stay while the snapshot that removed them is kept (a changelog read of it reads them).
    assert first_files < data_files(out, "scores", DAYS[0])
    table = out.catalog.load_table("sentiment.review_scores")
    for snapshot in table.metadata.snapshots:  # every kept snapshot still reads
        assert table.scan(snapshot_id=snapshot.snapshot_id).to_arrow().num_rows > 0
    assert all(out.tables.verify(day)[0] for day in DAYS)


def test_without_retention_or_within_it_no_snapshot_is_expired(tmp_path):
    """The twins: unset retention never expires; a publish within the retention window expires nothing."""
    never, clock, first_files = _retained(tmp_path / "never", retention_days=None)
    clock.ahead = 365 * 86400
    never.publish(*stage(tmp_path / "never", DAYS[2], "run-2", 20, 0, write=write_local))
    assert len(_snapshot_ids(never, "scores")) == 4
    assert first_files < data_files(never, "scores", DAYS[0])  # the first night is still there for time travel

    within, clock, first_files = _retained(tmp_path / "within", retention_days=1)
    clock.ahead = 3600  # an hour later
    within.publish(*stage(tmp_path / "within", DAYS[2], "run-2", 20, 0, write=write_local))
    assert len(_snapshot_ids(within, "scores")) == 4
    assert first_files < data_files(within, "scores", DAYS[0])


def test_a_publish_whose_starting_snapshot_another_process_expired_meanwhile_lands(tmp_path, output):
    """Retention in another process may expire the snapshot this publish planned on (another day was committed on
    top of it first). That is no conflict with this day: the publish re-plans on the refreshed table and lands."""
    output.publish(*stage(tmp_path, DAYS[0], "run-0", 20, 1, write=write_local))
    other = DayCommit(OutputTables(output.output))
    late = stage(tmp_path, DAYS[1], "run-late", 30, 2, write=write_local)
    meanwhile = stage(tmp_path, DAYS[2], "run-meanwhile", 25, 0, write=write_local)

    def publish_and_expire_meanwhile(name):
        if other.tables.verify(DAYS[2])[0] is False:
            planned_on = current_snapshot(output, "scores")
            other.publish(*meanwhile)
            other.catalog.load_table("sentiment.review_scores").maintenance.expire_snapshots().by_id(
                planned_on
            ).commit()

    with failpoints.armed("iceberg.scores-planned", publish_and_expire_meanwhile, times=1):
        output.publish(*late)
    for day, rows in zip(DAYS, (20, 30, 25)):
        assert day_rows(output, "scores", day).num_rows == rows
        assert output.tables.verify(day)[0], output.tables.verify(day)


# ------------------------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("step", ICEBERG_PUBLISH)
def test_a_crash_at_each_step_keeps_the_previous_snapshot_and_the_next_publish_cleans_up(tmp_path, output, step):
    output.publish(*stage(tmp_path, DAYS[0], "run-old", 40, 2, write=write_local))
    before = {kind: current_snapshot(output, kind) for kind in ("scores", "rejects")}
    old_files = data_files(output, "scores", DAYS[0])

    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-crashed", 25, 5, model="v2", write=write_local)
    with failpoints.armed(step, "raise"), pytest.raises(FailpointHit):
        output.publish(day, scores, rejects, props)
    committed = ICEBERG_PUBLISH[: ICEBERG_PUBLISH.index(step) + 1]
    for kind in ("scores", "rejects"):
        landed = f"iceberg.{kind}-committed" in committed
        assert (current_snapshot(output, kind) != before[kind]) is landed, kind
        assert day_rows(output, kind, DAYS[0]).num_rows == ({"scores": 25, "rejects": 5} if landed else {}).get(
            kind, {"scores": 40, "rejects": 2}[kind]
        )
    landed = {kind: f"iceberg.{kind}-committed" in committed for kind in ("scores", "rejects")}
    assert_iceberg_readers_see(
        output.tables.catalog_properties, DAYS[0], 25 if landed["scores"] else 40, 5 if landed["rejects"] else 2
    )
    complete, message = output.tables.verify(DAYS[0])
    if "iceberg.rejects-committed" in committed and "iceberg.scores-committed" not in committed:
        assert not complete
        assert "scores are from run run-old, rejects from run run-crashed" in message
        assert output.tables.published_model_version(DAYS[0]) is None
    else:
        assert complete, message
    crashed_files = {os.path.basename(p) for p in scores}

    output.publish(*stage(tmp_path, DAYS[0], "run-next", 30, 3, write=write_local))
    assert output.tables.verify(DAYS[0]) == (
        True,
        f"{DAYS[0]}: complete: 30 scored + 3 rejected = 33 read in 3 file(s), run run-next, model v1",
    )
    assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 30, 3)
    left = data_files(output, "scores", DAYS[0])
    assert old_files <= left  # an older snapshot still reads them
    if "iceberg.scores-committed" in committed:
        assert crashed_files <= left  # the crashed run's night is a snapshot too
    else:
        assert not crashed_files & left  # never referenced: removed
    table = output.catalog.load_table("sentiment.review_scores")
    for snapshot in table.metadata.snapshots:  # every snapshot still reads
        assert table.scan(snapshot_id=snapshot.snapshot_id).to_arrow().num_rows > 0


def test_a_publish_retried_by_the_same_run_after_a_crash_lands_once(tmp_path, output):
    args = stage(tmp_path, DAYS[0], "run-a", 20, 2, write=write_local)

    with failpoints.armed("iceberg.scores-committed", "raise"), pytest.raises(FailpointHit):
        output.publish(*args)
    snapshots = len(output.catalog.load_table("sentiment.review_scores").metadata.snapshots)
    output.publish(*args)  # staged files are gone now: taken from where the first attempt moved them
    assert len(output.catalog.load_table("sentiment.review_scores").metadata.snapshots) == snapshots
    assert day_rows(output, "scores", DAYS[0]).num_rows == 20
    assert output.tables.verify(DAYS[0])[0]
    assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 20, 2)


def test_the_outside_readers_check_fails_on_a_day_whose_data_file_is_gone(tmp_path, output):
    """The twin of the readers' checks the fault tests end with (tests/readers.py): they can fail."""
    output.publish(*stage(tmp_path, DAYS[0], "run-a", 20, 2, write=write_local))
    assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 20, 2)
    with pytest.raises(AssertionError):
        assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 21, 2)
    location = output.catalog.load_table(output.table_names["scores"]).location().removeprefix("file://")
    os.remove(f"{location}/data/dt={DAYS[0]}/{sorted(data_files(output, 'scores', DAYS[0]))[0]}")
    with pytest.raises(OSError):
        assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 20, 2)


def test_a_staged_shard_that_is_gone_is_an_error_not_an_empty_day(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 20, 2, write=write_local)
    os.remove(scores[0])
    with pytest.raises(FileNotFoundError, match="scores-run-a-00000.parquet: staged shard is gone"):
        output.publish(day, scores, rejects, props)
    assert current_snapshot(output, "scores") is None


# ------------------------------------------------------------------------------------------- verify


def test_verify_names_a_deleted_data_file(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 20, 2, write=write_local)
    output.publish(day, scores, rejects, props)
    assert output.tables.verify(day)[0]
    location = output.catalog.load_table("sentiment.review_scores").location().removeprefix("file://")
    gone = f"{location}/data/dt={day}/{os.path.basename(scores[1])}"
    os.remove(gone)
    complete, message = output.tables.verify(day)
    assert not complete
    assert message == f"{day}: table sentiment.review_scores: data file file://{gone} is missing"
    assert output.tables.published_model_version(day) is None


def test_verify_names_a_truncated_data_file(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 20, 2, write=write_local)
    output.publish(day, scores, rejects, props)
    location = output.catalog.load_table("sentiment.review_scores").location().removeprefix("file://")
    path = f"{location}/data/dt={day}/{os.path.basename(scores[0])}"
    with open(path, "r+b") as f:
        f.truncate(100)
    complete, message = output.tables.verify(day)
    assert not complete and "has 100 bytes, the table lists" in message


# ------------------------------------------------------------------------------------------- schemas


def test_string_ids_make_string_tables_and_large_string_matches_them(tmp_path):
    string_ids = pa.schema([pa.field(f.name, pa.string()) if f.name.endswith("_id") else f for f in SCORES])
    out = DayCommit(OutputTables(str(tmp_path / "out")))
    out.prepare({"scores": string_ids})
    table = out.catalog.load_table("sentiment.review_scores")
    assert str(table.schema().find_field("review_id").field_type) == "string"
    assert str(table.schema().find_field("dt").field_type) == "date"
    assert [f.name for f in table.spec().fields] == ["dt"]
    large = pa.schema([pa.field(f.name, pa.large_string()) if f.type == pa.string() else f for f in string_ids])
    out.prepare({"scores": large})  # the same Iceberg type: no error


def test_schemas_given_with_no_file_behind_them_create_no_table_and_an_empty_day_is_refused(tmp_path):
    """A run with no review file knows no id kind: its schemas are a guess, so they create no table (the next night's
    string ids would be refused by long columns). An empty day into tables that do not exist is refused naming
    why; the first day with rows creates the tables from its shards."""
    from pyiceberg.exceptions import NoSuchTableError

    out = DayCommit(OutputTables(str(tmp_path / "out")))
    out.prepare({"scores": SCORES, "rejects": REJECTS}, create=False)
    with pytest.raises(NoSuchTableError):
        out.catalog.load_table("sentiment.review_scores")
    with pytest.raises(
        IcebergPublishError,
        match=r"^table sentiment.review_rejects does not exist yet and 2026-03-01 has no rows to take its column "
        r"types from: not published",
    ):
        out.publish(*stage(tmp_path, DAYS[0], "run-empty", 0, 0, shards=1, write=write_local))
    with pytest.raises(NoSuchTableError):
        out.catalog.load_table("sentiment.review_scores")

    def write_string_ids(table, path):
        ids = pa.schema([pa.field(f.name, pa.string()) if f.name.endswith("_id") else f for f in table.schema])
        write_local(table.cast(ids), path)

    out.publish(*stage(tmp_path, DAYS[1], "run-rows", 20, 1, write=write_string_ids))
    table = out.catalog.load_table("sentiment.review_scores")
    assert str(table.schema().find_field("review_id").field_type) == "string"
    assert day_rows(out, "scores", DAYS[1])["review_id"].to_pylist()[:2] == ["0", "1"]
    assert out.tables.verify(DAYS[1])[0]


def test_a_run_whose_columns_do_not_match_the_table_fails_naming_table_and_column(tmp_path, output):
    string_ids = pa.schema([pa.field(f.name, pa.string()) if f.name == "review_id" else f for f in SCORES])
    with pytest.raises(
        IcebergSchemaError,
        match=r"^table sentiment.review_scores: column review_id is string in "
        r"this run, long in the table$",
    ):
        output.prepare({"scores": string_ids})
    with pytest.raises(
        IcebergSchemaError,
        match=r"^table sentiment.review_rejects: column purchase_history \(double\)"
        r" is missing in this run$",
    ):
        output.prepare({"rejects": REJECTS.remove(REJECTS.get_field_index("purchase_history"))})
    with pytest.raises(IcebergSchemaError, match=r"^table sentiment.review_scores: column extra in this run is not"):
        output.prepare({"scores": SCORES.append(pa.field("extra", pa.int32()))})


def test_a_staged_shard_with_other_columns_is_refused_naming_the_table_before_anything_moves(tmp_path, output):
    day, scores, rejects, props = stage(tmp_path, DAYS[0], "run-a", 10, 1, write=write_local)
    table = pq.read_table(scores[1])
    pq.write_table(table.set_column(0, "review_id", pc.cast(table["review_id"], pa.string())), scores[1])
    with pytest.raises(IcebergSchemaError, match="table sentiment.review_scores: column review_id is string in /"):
        output.publish(day, scores, rejects, props)
    assert all(os.path.exists(p) for p in scores)
    assert data_files(output, "scores", day) == set()


# ------------------------------------------------------------------------------------------- two processes


def _publish_in_process(root, args, barrier, planned, committed, results, key):
    """One process publishing one day. With planned/committed (the forced conflict): it plans its scores commit,
    says so, and waits until the other process has committed before committing itself."""
    out = DayCommit(OutputTables(root))

    def step(name):
        if planned is not None and not planned.is_set():
            planned.set()
            committed.wait(timeout=60)

    barrier.wait(timeout=60)
    try:
        with failpoints.armed("iceberg.scores-planned", step):
            results.put((key, ("ok", out.publish(*args)["scores"])))
    except Exception as e:  # reported to the test, which names it
        results.put((key, (type(e).__name__, str(e))))
    finally:
        if planned is not None:
            planned.set()


def _publish_after_the_other_planned(root, args, barrier, planned, committed, results):
    barrier.wait(timeout=60)
    planned.wait(timeout=60)
    try:
        results.put(("second", ("ok", DayCommit(OutputTables(root)).publish(*args)["scores"])))
    finally:
        committed.set()


def _run_two(tmp_path, output, conflict: bool, second_day: str = DAYS[1], root: str | None = None) -> dict:
    # A queue, not a Manager: Beam's inference module (imported by earlier tests in the same process) replaces
    # multiprocessing.managers.AutoProxy, and a spawn-context Manager's proxies then cannot be pickled.
    ctx = multiprocessing.get_context("spawn")
    barrier, planned, committed, results = ctx.Barrier(2), ctx.Event(), ctx.Event(), ctx.Queue()
    first = stage(tmp_path, DAYS[0], "run-first", 60, 2, write=write_local)
    second = stage(tmp_path, second_day, "run-second", 70, 3, write=write_local)
    root = root or output.output
    if conflict:
        a_args = (root, first, barrier, planned, committed, results, "first")
        b = ctx.Process(
            target=_publish_after_the_other_planned, args=(root, second, barrier, planned, committed, results)
        )
    else:
        a_args = (root, first, barrier, None, None, results, "first")
        b = ctx.Process(target=_publish_in_process, args=(root, second, barrier, None, None, results, "second"))
    a = ctx.Process(target=_publish_in_process, args=a_args)
    a.start()
    b.start()
    collected = dict(results.get(timeout=180) for _ in range(2))
    for p in (a, b):
        p.join(timeout=120)
        assert p.exitcode == 0
    return collected


@pytest.mark.slow
@pytest.mark.parametrize("conflict", [False, True], ids=["at-once", "forced-conflict"])
def test_two_processes_committing_different_days_both_land(tmp_path, output, conflict):
    results = _run_two(tmp_path, output, conflict)
    assert results["first"][0] == "ok" and results["second"][0] == "ok", results
    table = output.catalog.load_table("sentiment.review_scores")
    if conflict:  # the first planned on the empty table, the second committed, the first landed on top of it
        assert table.snapshot_by_id(results["first"][1]).parent_snapshot_id == results["second"][1]
    for day, scored, rejected in ((DAYS[0], 60, 2), (DAYS[1], 70, 3)):
        assert day_rows(output, "scores", day).num_rows == scored
        assert day_rows(output, "rejects", day).num_rows == rejected
        assert output.tables.verify(day)[0], output.tables.verify(day)
        assert_iceberg_readers_see(output.tables.catalog_properties, day, scored, rejected)
    assert len(table.metadata.snapshots) == 2


@pytest.mark.slow
def test_two_processes_creating_the_catalog_and_tables_at_once_both_land(tmp_path, output):
    """First use from two processes at once: one creates the SQLite catalog and each table, the other uses them."""
    fresh = DayCommit(OutputTables(str(tmp_path / "fresh")))
    results = _run_two(tmp_path, output, conflict=False, root=fresh.output)
    assert results["first"][0] == "ok" and results["second"][0] == "ok", results
    assert output.catalog.load_table("sentiment.review_scores").current_snapshot() is None  # the other output
    for day, scored in ((DAYS[0], 60), (DAYS[1], 70)):
        assert day_rows(fresh, "scores", day).num_rows == scored
        assert fresh.tables.verify(day)[0]


def test_a_namespace_another_process_inserts_after_the_check_is_used(tmp_path, monkeypatch):
    """The race CI hit in the test above: pyiceberg's SQL catalog checks that the namespace is absent, then inserts it;
    when another process inserts in between, the insert fails on the UNIQUE constraint (IntegrityError, not
    NamespaceAlreadyExistsError). The namespace exists all the same, so the tables are created in it."""
    first, other = (
        DayCommit(OutputTables(str(tmp_path / "fresh"))),
        DayCommit(OutputTables(str(tmp_path / "fresh"))),
    )
    namespace = tuple(first.table_names["scores"].split(".")[:-1])
    real_check, calls = first.catalog.namespace_exists, []

    def check_then_lose_the_race(ns):
        calls.append(ns)
        if len(calls) == 1:  # this process's check sees no namespace; the other process creates it right after
            other.catalog.create_namespace(namespace)
            return False
        return real_check(ns)

    monkeypatch.setattr(first.catalog, "namespace_exists", check_then_lose_the_race)
    first.prepare({"scores": SCORES, "rejects": REJECTS})
    for kind in ("scores", "rejects"):
        assert other.catalog.load_table(other.table_names[kind]).current_snapshot() is None
    assert len(calls) >= 2  # the lost race was seen and checked, not skipped


def test_a_namespace_insert_that_fails_while_the_namespace_is_absent_still_fails(tmp_path, monkeypatch):
    """The failure twin: an IntegrityError that the namespace's existence does not explain is not swallowed."""
    from sqlalchemy.exc import IntegrityError

    first, other = (
        DayCommit(OutputTables(str(tmp_path / "fresh"))),
        DayCommit(OutputTables(str(tmp_path / "fresh"))),
    )
    namespace = tuple(first.table_names["scores"].split(".")[:-1])
    other.catalog.create_namespace(namespace)  # the insert will fail on the constraint...
    monkeypatch.setattr(first.catalog, "namespace_exists", lambda ns: False)  # ...and the catalog says it is absent
    with pytest.raises(IntegrityError):
        first.prepare({"scores": SCORES, "rejects": REJECTS})


def _losing(error: Exception, times: int):
    """A creation that loses its race `times` times (raising error), then returns how many calls it took."""
    calls = []

    def make():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)

    return make


def test_a_creation_that_loses_the_race_is_retried_until_it_lands_or_its_attempts_end():
    from sqlalchemy.exc import IntegrityError, OperationalError

    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    assert retry_racing_creation(_losing(locked, 2), attempts=3) == 3
    taken = IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
    make = _losing(taken, 3)
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):  # its own error, after the last attempt
        retry_racing_creation(make, attempts=3)
    assert make() == 4  # three calls were made, no more


def test_an_error_that_is_not_a_lost_race_is_not_retried():
    """The failure twin: anything but the race's two errors is raised at once."""
    make = _losing(ValueError("bad catalog property"), 1)
    with pytest.raises(ValueError, match="bad catalog property"):
        retry_racing_creation(make, attempts=5)
    assert make() == 2  # one call before this one


@pytest.mark.slow
def test_a_concurrent_publish_of_the_same_day_is_refused_not_doubled(tmp_path, output):
    """The failure twin: what the lease prevents. The second process replaces the same day while the first waits to
    commit: the first is refused naming the day, and the table holds the second's day alone."""
    results = _run_two(tmp_path, output, conflict=True, second_day=DAYS[0])
    assert results["second"][0] == "ok", results
    assert results["first"][0] == "IcebergPublishError", results
    assert "table sentiment.review_scores, 2026-03-01: another publish changed this day" in results["first"][1]
    assert day_rows(output, "scores", DAYS[0]).num_rows == 70
    assert output.tables.verify(DAYS[0]) == (
        True,
        f"{DAYS[0]}: complete: 70 scored + 3 rejected = 73 read in 3 file(s), run run-second, model v1",
    )
    assert_iceberg_readers_see(output.tables.catalog_properties, DAYS[0], 70, 3)


# ------------------------------------------------------------------------------------------- S3


@pytest.fixture
def s3_output(s3_endpoint, tmp_path):
    bucket = f"iceberg-{uuid.uuid4().hex[:8]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    catalog = {
        "name": "sentiment-on-s3",  # taken out before the rest goes to pyiceberg: the SQL rows are keyed by it
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
        "warehouse": f"s3://{bucket}/warehouse",
        "s3.endpoint": s3_endpoint,
        "s3.access-key-id": S3_ACCESS_KEY,
        "s3.secret-access-key": S3_SECRET_KEY,
        "s3.region": S3_REGION,
    }
    out = DayCommit(OutputTables(f"s3://{bucket}/out", catalog=catalog))
    out.prepare({"scores": SCORES, "rejects": REJECTS})
    return out, bucket, s3_client(s3_endpoint)


@pytest.mark.slow
def test_a_warehouse_on_s3_publishes_reruns_travels_and_verifies(s3_output):
    out, bucket, client = s3_output
    fs, _ = out._fs(f"s3://{bucket}/x")

    def write_s3(table, path):
        pq.write_table(table, path.removeprefix("s3://"), filesystem=fs)

    root = f"s3://{bucket}/out"
    for n, day in enumerate(DAYS[:2]):
        out.publish(*stage(root, day, f"run-{n}", 40 + n, n, write=write_s3))
    before = current_snapshot(out, "scores")

    with failpoints.armed("iceberg.rejects-planned", "raise"), pytest.raises(FailpointHit):
        out.publish(*stage(root, DAYS[0], "run-crashed", 10, 0, write=write_s3))
    out.publish(*stage(root, DAYS[0], "run-again", 45, 1, model="v2", write=write_s3))

    assert day_rows(out, "scores", DAYS[0]).num_rows == 45 and day_rows(out, "scores", DAYS[1]).num_rows == 41
    assert day_rows(out, "scores", DAYS[0], snapshot_id=before).num_rows == 40
    assert out.tables.published_model_version(DAYS[0]) == "v2"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="warehouse/")["Contents"]]
    # (pyarrow leaves empty folder markers, "…/", behind the objects it moves: not files)
    day_keys = [k for k in keys if f"/data/dt={DAYS[0]}/" in k and "/review_scores/" in k and not k.endswith("/")]
    assert not [k for k in day_keys if "run-crashed" in k]  # the crashed run's moved shards were cleaned
    assert len(day_keys) == 4  # run-0's two (time travel) and run-again's two
    staged = client.list_objects_v2(Bucket=bucket, Prefix="out/staging/").get("Contents", [])
    assert [o["Key"] for o in staged if "/scores-" in o["Key"]] == []  # all moved in (0-row shards stay)
    current = next(k for k in day_keys if "run-again" in k)
    client.delete_object(Bucket=bucket, Key=current)
    complete, message = out.tables.verify(DAYS[0])
    assert not complete and message.endswith(f"s3://{bucket}/{current} is missing")
