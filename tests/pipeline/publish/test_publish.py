"""Publishing you can trust: the manifest protocol under injected crashes, verify, leases raced by real processes,
reruns without --date, day-by-day backfills, the reject ceiling and row-level failures that never fail a run."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import failpoints
from pipeline.failpoints import PARQUET_PUBLISH
from pipeline.publish import lease
from pipeline.publish.parquet import (
    SUCCESS_FILE,
    ParquetFolders,
    check_partition,
    publish_partition,
    published_summary,
    read_manifest,
)
from pipeline.publish.publisher import PartitionFacts, RowCounts
from pipeline.run.launcher import execute
from pipeline.training.sample_data import write_sample_data
from tests.conftest import clean_processes, corrupt_first_page_header, race_for_lease, run_bundle, run_config
from tests.readers import assert_parquet_readers_see
from transforms.io import Shard

DATE = "2026-03-01"
IDS = pa.schema([("review_id", pa.int64())])

lease_folder = ParquetFolders.lease_folder  # where the Parquet publisher keeps a partition's lease


# ---------------------------------------------------------------------------------------------------------------------
# The protocol itself, with a crash injected after each step


class _Crash(RuntimeError):
    """Stands for the process dying at that point of the publish."""


def _stage(directory, run: str, ids: list[list[int]]) -> list[Shard]:
    """Real Parquet shards of review ids under run-unique names, as the writers leave them in staging."""
    os.makedirs(directory, exist_ok=True)
    shards = []
    for i, chunk in enumerate(ids):
        path = os.path.join(directory, f"scores-{run}-{i:04d}.parquet")
        pq.write_table(pa.table({"review_id": pa.array(chunk, pa.int64())}), path)
        shards.append(Shard("scores", path, len(chunk)))
    empty = os.path.join(directory, f"rejects-{run}-empty.parquet")
    pq.write_table(IDS.empty_table(), empty)
    shards.append(Shard("rejects", empty, 0))
    return shards


def _publish(tmp_path, partition, run: str, ids: list[list[int]]) -> dict:
    read = sum(len(c) for c in ids)
    facts = PartitionFacts(run, "m", RowCounts(read, read, 0), partition=DATE)
    shards = _stage(tmp_path / "staging" / run, run, ids)
    return publish_partition(shards, str(partition), facts, {"summary.json": json.dumps({"run_id": run}).encode()})


def _manifest_ids(partition) -> list[int]:
    """What a reader that follows the manifest sees: the ids in the files _SUCCESS lists."""
    manifest = read_manifest(str(partition))
    files = [os.path.join(partition, e["name"]) for e in manifest["files"] if e["kind"] == "scores"]
    return sorted(pa.concat_tables([pq.read_table(f) for f in files])["review_id"].to_pylist())


@pytest.mark.parametrize("crash_after", PARQUET_PUBLISH)
def test_a_crash_at_any_publish_step_leaves_the_old_or_the_new_partition_never_neither(tmp_path, crash_after):
    partition = tmp_path / "out" / f"dt={DATE}"
    old_ids, new_ids = [[1, 2, 3], [4, 5]], [[1, 2], [3, 4, 5, 6]]
    _publish(tmp_path, partition, "run-old", old_ids)
    seen = []

    def crash(step):
        check = check_partition(str(partition))
        assert check.complete, f"after {step}: {check.message}"  # complete at every step, old or new
        seen.append(read_manifest(str(partition))["run_id"])
        assert _manifest_ids(partition) in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])  # never doubled, never partial
        # The reports a reader finds are those of the manifest's run: a crash after the new reports and before the
        # new manifest never shows the new summary beside the old manifest.
        assert published_summary(str(partition))["run_id"] == seen[-1]
        if step == crash_after:
            raise _Crash(step)

    with failpoints.armed(PARQUET_PUBLISH, crash), pytest.raises(_Crash):
        _publish(tmp_path, partition, "run-new", new_ids)
    expected = (
        "run-new" if PARQUET_PUBLISH.index(crash_after) >= PARQUET_PUBLISH.index("parquet.manifest") else "run-old"
    )
    assert seen[-1] == expected
    assert check_partition(str(partition)).complete

    # The next run publishes and removes whatever no manifest lists.
    _publish(tmp_path, partition, "run-next", [[1, 2, 3, 4, 5, 6, 7]])
    assert _manifest_ids(partition) == [1, 2, 3, 4, 5, 6, 7]
    assert_parquet_readers_see(tmp_path / "out", DATE, 7)  # folder readers too, once the day is published again
    files = glob.glob(f"{partition}/**/*", recursive=True)
    left = sorted(os.path.relpath(p, partition) for p in files if os.path.isfile(p) and not p.endswith(SUCCESS_FILE))
    assert left == sorted(e["name"] for e in read_manifest(str(partition))["files"])  # shards and reports
    assert all("run-next" in n for n in left)


def test_a_retried_publish_after_a_crash_completes_without_moving_twice(tmp_path):
    partition = tmp_path / "out" / f"dt={DATE}"
    shards = _stage(tmp_path / "staging" / "r1", "r1", [[1, 2], [3]])
    facts = PartitionFacts("r1", "m", RowCounts(3, 3, 0), partition=DATE)

    with failpoints.armed("parquet.moved", "raise"), pytest.raises(failpoints.FailpointHit):
        publish_partition(shards, str(partition), facts, {})
    assert not check_partition(str(partition)).complete  # nothing was published before: still nothing complete
    publish_partition(shards, str(partition), facts, {})  # the runner retries the commit: the shards moved already
    assert check_partition(str(partition)).complete and _manifest_ids(partition) == [1, 2, 3]


def test_check_partition_names_a_missing_a_short_and_a_resized_file(tmp_path):
    partition = tmp_path / "out" / f"dt={DATE}"
    _publish(tmp_path, partition, "r1", [[1, 2, 3], [4]])
    assert check_partition(str(partition)).complete
    listed = [e for e in read_manifest(str(partition))["files"] if e["kind"] == "scores"]
    first = partition / listed[0]["name"]
    moved = tmp_path / "moved.parquet"
    shutil.move(first, moved)
    check = check_partition(str(partition))
    assert not check.complete and listed[0]["name"] in check.message and "missing" in check.message
    pq.write_table(pa.table({"review_id": pa.array([9], pa.int64())}), first)  # a different file under the name
    check = check_partition(str(partition))
    assert not check.complete and listed[0]["name"] in check.message
    shutil.move(moved, first)
    (partition / SUCCESS_FILE).write_text("20260101T000000Z-0123abcd\n")  # an old-style marker is no manifest
    check = check_partition(str(partition))
    assert not check.complete and "manifest" in check.message


# ---------------------------------------------------------------------------------------------------------------------
# Leases, raced by real processes


@pytest.mark.slow
def test_two_processes_racing_for_a_lease_never_both_win(tmp_path):
    control = str(tmp_path / "out.staging")
    context = clean_processes()
    results = context.Queue()
    rounds = 40
    for i in range(rounds):
        partition = f"2026-01-{i % 28 + 1:02d}-{i}"
        if i % 2:  # half the rounds race for a partition whose previous lease was released
            lease.acquire(lease_folder(control, partition), "earlier", time.time(), 3600)
            lease.release(lease_folder(control, partition), "earlier")
        barrier = context.Barrier(2)
        workers = [
            context.Process(target=race_for_lease, args=(None, control, partition, f"run-{i}-{k}", barrier, results))
            for k in range(2)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
    outcomes = [results.get(timeout=10) for _ in range(2 * rounds)]
    for i in range(rounds):
        won = [o for o in outcomes if o[0].endswith(f"-{i}") and o[2] == "won"]
        assert len(won) == 1, (i, outcomes)
        holder = lease.current(lease_folder(control, won[0][0]))
        assert holder.run_id == won[0][1] and not holder.released


def test_a_held_lease_names_its_run_and_start_and_lapses_at_expiry(tmp_path):
    control = str(tmp_path / "out.staging")
    started = time.time()
    lease.acquire(lease_folder(control, DATE), "run-a", started, 3600)
    with pytest.raises(
        lease.LeaseHeld, match=rf"run run-a .*started {time.strftime('%Y-%m-%dT%H', time.gmtime(started))}"
    ):
        lease.acquire(lease_folder(control, DATE), "run-b", time.time(), 3600)
    taken = lease.acquire(lease_folder(control, DATE), "run-c", time.time(), 3600, take_over=True)  # the flag
    assert taken.run_id == "run-c" and taken.generation == 1
    # Older generations stay: deleting one while a rival listed the folder let the rival create generation 0 again.
    assert len(glob.glob(f"{control}/_leases/dt={DATE}/lease-*.json")) == 2
    # A run that lost its lease cannot release the new holder's.
    assert not lease.release(lease_folder(control, DATE), "run-a")
    with pytest.raises(lease.LeaseHeld, match="lost the lease"):
        lease.renew(lease_folder(control, DATE), "run-a", 3600)

    # Expiry on the store's clock, driven by an injected store time instead of a sleep racing a short expiry.
    short = lease.acquire(lease_folder(control, "2026-03-02"), "short", time.time(), 60)
    with pytest.raises(lease.LeaseHeld, match="run short"):
        lease.acquire(lease_folder(control, "2026-03-02"), "early", time.time(), 3600, now=short.expires_at - 1)
    late = lease.acquire(lease_folder(control, "2026-03-02"), "late", time.time(), 3600, now=short.expires_at + 1)
    assert late.run_id == "late"


def test_the_folder_readers_check_fails_on_a_shard_no_manifest_lists(tmp_path):
    """The twin of the readers' checks the fault tests end with (tests/readers.py): a file left in the day's folder
    (what a crash mid-publish leaves until the next publish of the day) doubles what folder readers read."""
    partition = tmp_path / "out" / f"dt={DATE}"
    _publish(tmp_path, partition, "run-a", [[1, 2, 3], [4, 5]])
    assert_parquet_readers_see(tmp_path / "out", DATE, 5)
    shard = sorted(n for n in os.listdir(partition) if n.startswith("scores-"))[0]
    shutil.copy(partition / shard, partition / f"x-{shard}")
    with pytest.raises(AssertionError):
        assert_parquet_readers_see(tmp_path / "out", DATE, 5)


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs


def _config(paths: dict, bundle_dir, **extra):
    return run_config(paths, bundle_dir, **{"runtime": "litert", **extra})


def _recursive_read(root) -> pa.Table:
    """What a reader scanning `**/*.parquet` below a folder sees (Spark, DuckDB, pyarrow.dataset on a file list)."""
    files = sorted(glob.glob(f"{root}/**/*.parquet", recursive=True))
    return ds.dataset(files, format="parquet").to_table(columns=["review_id"])


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def three_days(tmp_path_factory):
    root = tmp_path_factory.mktemp("three-days")
    write_sample_data(str(root), reviews=900, days=3, seed=5, end_date=DATE)
    return root


@pytest.mark.slow
def test_three_reruns_without_date_leave_each_review_once_and_no_folder_inside_output(tmp_path, three_days, bundle_dir):
    reviews = f"{three_days}/reviews/dt={DATE}"
    paths = {"customers": f"{three_days}/customers", "reviews": reviews, "output": str(tmp_path / "out")}
    for _ in range(3):
        assert execute(_config(paths, bundle_dir), None, []) == 0
    output = tmp_path / "out"
    # Nothing nested that a reader of the folder sees: only the "_"-named rejects and reports of the one run.
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["_rejects", "_report"]
    assert len(os.listdir(output / "_report")) == 1
    scored = read_manifest(str(output))["rows"]["scored"]
    assert ds.dataset(str(output), format="parquet").count_rows() == scored  # a folder reader: the scores, once
    table = _recursive_read(output)
    read = pq.read_table(reviews, columns=["review_id"])
    assert table.num_rows == read.num_rows  # scores + rejects: every review exactly once
    assert sorted(table["review_id"].to_pylist()) == sorted(read["review_id"].to_pylist())

    done = _cli("verify", "--output", str(output), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK ") and "complete" in done.stdout
    shard = sorted(output.glob("scores-*.parquet"))[0]
    shard.rename(tmp_path / shard.name)  # a scores shard moved away
    broken = _cli("verify", "--output", str(output), cwd=tmp_path)
    assert broken.returncode == 1
    assert f"{shard.name} is missing" in broken.stdout and broken.stdout.startswith("INCOMPLETE ")


@pytest.mark.slow
def test_verify_over_a_date_range_names_the_day_that_was_never_published(tmp_path, three_days, bundle_dir):
    paths = {"customers": f"{three_days}/customers", "reviews": f"{three_days}/reviews", "output": str(tmp_path / "o")}
    assert execute(_config(paths, bundle_dir, date=DATE), [DATE], []) == 0
    ok = _cli("verify", "--output", paths["output"], "--date", DATE, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = _cli("verify", "--output", paths["output"], "--start", "2026-02-28", "--end", DATE, cwd=tmp_path)
    assert missing.returncode == 1
    assert "dt=2026-02-28: no _SUCCESS" in missing.stdout and "1 of 2 partition(s) incomplete" in missing.stdout


@pytest.mark.slow
def test_two_runs_of_one_date_started_together_leave_one_complete_partition(tmp_path, three_days, bundle_dir):
    output = tmp_path / "out"
    args = [
        "score",
        "--customers",
        f"{three_days}/customers",
        "--reviews",
        f"{three_days}/reviews",
        "--model-dir",
        str(bundle_dir),
        "--output",
        str(output),
        "--date",
        DATE,
        "--runner=FnApiRunner",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "pipeline", *args]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    outcomes = [(r.wait(600), *r.communicate()) for r in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes in ([0, 0], [0, 3]), outcomes
    for code, _, err in outcomes:
        if code == 3:
            assert "is being written by run" in err and "started" in err
    check = check_partition(str(output / f"dt={DATE}"))
    assert check.complete, check.message
    data = _recursive_read(output / f"dt={DATE}")
    assert data.num_rows == check.manifest.rows.read  # not doubled, whichever run published last


def _write_reviews(path, ids, customers, texts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table(
        {
            "review_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array(customers, pa.int64()),
            "review_text": pa.array(texts, pa.binary()).view(pa.string()),  # may hold invalid UTF-8, as files do
        }
    )
    pq.write_table(table, path)


def _write_customers(root, ids):
    os.makedirs(f"{root}/customers", exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "customer_id": pa.array(ids, pa.int64()),
                "age": pa.array([40.0] * len(ids)),
                "purchase_history": pa.array([120.0] * len(ids)),
            }
        ),
        f"{root}/customers/part-0.parquet",
    )


@pytest.mark.slow
def test_invalid_utf8_in_a_string_column_is_one_reject_and_the_rest_is_scored(tmp_path, bundle_dir):
    root = tmp_path / "in"
    _write_customers(root, [1, 2])
    texts = [b"great product", b"broke in a day \xff\xfe really", b"works fine", b"love it", b"meh"]
    _write_reviews(f"{root}/reviews/dt={DATE}/part-0.parquet", [10, 11, 12, 13, 14], [1, 2, 1, 2, 1], texts)
    paths = {"customers": f"{root}/customers", "reviews": f"{root}/reviews", "output": str(tmp_path / "out")}
    assert execute(_config(paths, bundle_dir, date=DATE, max_reject_fraction=0.5), [DATE], []) == 0
    partition = tmp_path / "out" / f"dt={DATE}"
    rejects = pa.concat_tables([pq.read_table(p) for p in partition.glob("_rejects/rejects-*.parquet")])
    scores = pa.concat_tables([pq.read_table(p) for p in partition.glob("scores-*.parquet")])
    assert rejects["review_id"].to_pylist() == [11] and rejects["reason"].to_pylist() == ["invalid_utf8"]
    assert rejects["review_text"].to_pylist() == ["broke in a day \\xff\\xfe really"]  # raw bytes, readable
    rejects["review_text"].combine_chunks().validate(full=True)  # the reject file itself is valid UTF-8
    assert sorted(scores["review_id"].to_pylist()) == [10, 12, 13, 14]


@pytest.mark.slow
def test_a_partition_above_the_reject_ceiling_is_not_published(tmp_path, bundle_dir, capsys):
    root = tmp_path / "in"
    _write_customers(root, [1, 2])
    ids = list(range(100, 110))
    customers = [1, 2, 1, 2] + [99] * 6  # 60 % have no customer record
    _write_reviews(f"{root}/reviews/dt={DATE}/part-0.parquet", ids, customers, [b"good value"] * 10)
    paths = {"customers": f"{root}/customers", "reviews": f"{root}/reviews", "output": str(tmp_path / "out")}
    capsys.readouterr()
    assert execute(_config(paths, bundle_dir, date=DATE), [DATE], []) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sentiment-score:")]
    assert len(err) == 1, err
    assert f"dt={DATE}" in err[0] and "60.0% of 10 rows rejected" in err[0]
    assert "missing_customer 6" in err[0] and "max_reject_fraction 0.1" in err[0]
    assert not (tmp_path / "out" / f"dt={DATE}").exists()
    # The twin: the same input under a ceiling it does not exceed is published.
    assert execute(_config(paths, bundle_dir, date=DATE, max_reject_fraction=0.6), [DATE], []) == 0
    assert check_partition(str(tmp_path / "out" / f"dt={DATE}")).complete


@pytest.mark.parametrize("chunk_days", [1, 7], ids=["chunk-per-day", "one-chunk"])
@pytest.mark.slow
def test_a_backfill_with_one_unreadable_day_publishes_the_others_then_resumes(tmp_path, bundle_dir, capsys, chunk_days):
    root = tmp_path / "in"
    write_sample_data(str(root), reviews=900, days=3, seed=9, end_date=DATE)
    days = ["2026-02-27", "2026-02-28", DATE]
    bad = sorted(glob.glob(f"{root}/reviews/dt=2026-02-28/*.parquet"))[0]
    with open(bad, "rb") as f:
        intact = f.read()
    corrupt_first_page_header(bad)  # the footer reads, so start-up passes; the rows do not
    paths = {"customers": f"{root}/customers", "reviews": f"{root}/reviews", "output": str(tmp_path / "out")}
    config = _config(paths, bundle_dir, backfill_chunk_days=chunk_days)
    capsys.readouterr()
    assert execute(config, days, [], backfill=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("sentiment-score: error: 1 of 3 partition(s) not published") and "dt=2026-02-28" in err[-1]
    )
    assert any(bad in line for line in err)  # the failed day's line names the file
    for day in ("2026-02-27", DATE):
        assert check_partition(str(tmp_path / "out" / f"dt={day}")).complete
    assert not (tmp_path / "out" / "dt=2026-02-28").exists()
    with open(err[-1].rsplit("run summary ", 1)[1], encoding="utf-8") as f:
        run_summary = json.load(f)
    assert run_summary["failed_partitions"] == ["2026-02-28"] and run_summary["status"] == "failed"

    with open(bad, "wb") as f:
        f.write(intact)  # the file is fixed
    published = {day: read_manifest(str(tmp_path / "out" / f"dt={day}"))["run_id"] for day in ("2026-02-27", DATE)}
    resumed = _config(paths, bundle_dir, backfill_chunk_days=chunk_days, skip_existing=True)
    assert execute(resumed, days, [], backfill=True) == 0
    assert check_partition(str(tmp_path / "out" / "dt=2026-02-28")).complete
    for day, run_id in published.items():  # the complete days were skipped, not rescored
        assert read_manifest(str(tmp_path / "out" / f"dt={day}"))["run_id"] == run_id


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
def test_a_model_that_fails_on_every_row_fails_its_partition_fast(tmp_path, bundle_dir, bundle, runtime):
    """Token ids beyond the embedding make every model call fail (a real failure of the real model on CPU, on
    either runtime: TensorFlow's InvalidArgumentError, LiteRT's out-of-bounds GATHER)."""
    from tests.conftest import run_handler
    from transforms.featurize import NUMERIC, TOKENS, matrix_column
    from transforms.inference import LiteRTModelHandler, TensorflowModelHandler
    from transforms.isolation import PROBES
    from transforms.schema import FAILURES, RunSchema

    n = 200
    tokens = np.full((n, bundle.sequence_length), 10**6, dtype=np.int32)
    numeric = np.zeros((n, len(bundle.feature_names)), dtype=np.float32)
    table = pa.table(
        {
            "review_id": pa.array(range(n), pa.int64()),
            "customer_id": pa.array([1] * n, pa.int64()),
            NUMERIC: matrix_column(numeric),
            TOKENS: matrix_column(tokens),
        }
    )
    if runtime == "tensorflow":
        handler = TensorflowModelHandler(str(bundle_dir), RunSchema(), batch_size=64, jit_compile=False, threads=1)
    else:
        handler = LiteRTModelHandler(str(bundle_dir), RunSchema(), threads=1)
    scorer, calls = handler.load_model(), []  # shared per process: the calls to the real model are counted
    predict = scorer.predict
    scorer.predict = lambda a, b: (calls.append(len(a)), predict(a, b))[1]
    try:
        outputs = run_handler(handler, [(DATE, table)])
    finally:
        scorer.predict = predict  # the scorer is shared per process with later tests
    failures = [o for o in outputs if getattr(o, "tag", None) == FAILURES]
    assert len(failures) == 1 and len(outputs) == 1
    partition, record = failures[0].value
    assert partition == DATE and record.stage == "infer" and "failed on every call" in record.message
    assert len(calls) == 1 + PROBES  # not the ~2n calls of a full bisection


class _FailsOnMarker:
    """The bundle's real featurizer, made to fail on rows whose text holds a marker (a fault injected by the test)."""

    def __init__(self, featurizer, marker: str):
        self._featurizer, self._marker = featurizer, marker

    def featurize(self, table, text_column):
        if any(self._marker in (t or "") for t in table[text_column].to_pylist()):
            raise ValueError(f"cannot featurize {self._marker!r}")
        return self._featurizer.featurize(table, text_column)


def _featurize_outputs(bundle_dir, texts, marker):
    from transforms.featurize import FeaturizeTables
    from transforms.schema import RunSchema

    n = len(texts)
    table = pa.table(
        {
            "review_id": pa.array(range(n), pa.int64()),
            "customer_id": pa.array([1] * n, pa.int64()),
            "review_text": texts,
            "age": pa.array([30.0] * n),
            "purchase_history": pa.array([10.0] * n),
        }
    )
    dofn = FeaturizeTables(str(bundle_dir), RunSchema(), threads=1)
    dofn.setup()
    real = dofn._featurizer
    dofn.setup = lambda: None  # keep the injected featurizer through run_bundle's lifecycle
    dofn._featurizer = _FailsOnMarker(real, marker)
    return run_bundle(dofn, [(DATE, table)])


def test_a_featurization_failure_is_isolated_to_its_rows(bundle_dir):
    texts = [f"good value number {i}" for i in range(100)]
    texts[37] = "POISON text"
    outputs = _featurize_outputs(bundle_dir, texts, "POISON")
    rows = [o for o in outputs if isinstance(o, tuple)]
    rejects = [o.value[1] for o in outputs if getattr(o, "tag", None) == "rejects"]
    stats = [o.value[1] for o in outputs if getattr(o, "tag", None) == "vocabulary_stats"]
    assert len(rows) == 1 and len(rejects) == 1 and len(stats) == 1
    featurized = rows[0][1]
    assert sorted(featurized["review_id"].to_pylist()) == [i for i in range(100) if i != 37]
    assert rejects[0]["review_id"].to_pylist() == [37] and rejects[0]["reason"].to_pylist() == ["featurize_error"]
    assert "cannot featurize" in rejects[0]["detail"][0].as_py()


def test_a_featurization_failure_on_every_row_fails_the_partition(bundle_dir):
    from transforms.schema import FAILURES

    outputs = _featurize_outputs(bundle_dir, [f"POISON {i}" for i in range(100)], "POISON")
    assert [getattr(o, "tag", None) for o in outputs] == [FAILURES]
    partition, record = outputs[0].value
    assert partition == DATE and record.stage == "featurize" and "every row" in record.message
