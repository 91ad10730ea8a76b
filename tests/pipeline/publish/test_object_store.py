"""The whole job with inputs, model bundle and output in s3://: moto's S3 server on loopback, Beam's S3 filesystem."""

import contextlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import failpoints
from pipeline.failpoints import PARQUET_PUBLISH
from pipeline.publish import lease
from pipeline.publish.parquet import (
    ParquetFolders,
    check_partition,
    publish_partition,
    published_summary,
    read_manifest,
)
from pipeline.publish.publisher import PartitionFacts, RowCounts
from pipeline.run.launcher import execute
from tests.conftest import SAMPLE_DATE, clean_processes, race_for_lease, run_config, sample_config
from tests.conftest import s3_client as _client
from transforms.io import Shard

# Every test here is slow (make test-fast skips them): a loopback S3 server (moto) and pipeline runs against it.
pytestmark = pytest.mark.slow

boto3 = pytest.importorskip("boto3")  # apache-beam[aws]: Beam's S3 filesystem talks to S3 through boto3
pytest.importorskip("moto.server")  # moto[server]: the S3 protocol served on loopback

BUCKET = "sentiment-e2e"
PARTITION = f"out/dt={SAMPLE_DATE}/"
STAGING = "out.staging/"
KILLED_RUN_LEFTOVER = f"{STAGING}20260101T000000Z-deadbeef/dt={SAMPLE_DATE}/scores-orphan.parquet"
STALE_SHARD = f"{PARTITION}scores-stale-from-elsewhere.parquet"

lease_folder = ParquetFolders.lease_folder  # where the Parquet publisher keeps a partition's lease


@pytest.fixture(scope="module")
def s3(s3_endpoint, sample_dir, bundle_dir):
    """A bucket with the sample customers and reviews (keeping dt=YYYY-MM-DD/) under in/, the bundle under model/."""
    client = _client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for root, prefix in ((sample_dir, "in"), (bundle_dir, "model")):
        for path in sorted(root.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")
    return client


def _keys(client, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _table(client, keys: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(pa.BufferReader(_get(client, k))) for k in keys])


def _shards(keys: list[str], kind: str) -> list[str]:
    return [k for k in keys if k.rsplit("/", 1)[-1].startswith(f"{kind}-") and k.endswith(".parquet")]


def _config(output: str, model_dir: str = f"s3://{BUCKET}/model", **extra):
    paths = {"customers": f"s3://{BUCKET}/in/customers", "reviews": f"s3://{BUCKET}/in/reviews", "output": output}
    return run_config(paths, model_dir, **{"date": SAMPLE_DATE, **extra})


def _snapshot(client, code: int) -> dict:
    """What a run left in the bucket: the partition's objects, its tables and summary, and the staging prefix."""
    keys = _keys(client, PARTITION)
    success = _get(client, f"{PARTITION}_SUCCESS").decode() if f"{PARTITION}_SUCCESS" in keys else None
    summary_key = f"{PARTITION}{json.loads(success)['summary']}" if success else None
    return {
        "code": code,
        "keys": keys,
        "scores": _table(client, _shards(keys, "scores")) if _shards(keys, "scores") else None,
        "rejects": _table(client, _shards(keys, "rejects")) if _shards(keys, "rejects") else None,
        "summary": json.loads(_get(client, summary_key)) if summary_key in keys else None,
        "success": success,
        "staging": _staging_keys(client, STAGING),
        "leases": _keys(client, f"{STAGING}_leases/"),
    }


def _staging_keys(client, prefix: str) -> list[str]:
    """Run staging left under a control prefix; the lease and run records that belong there are not staging."""
    return [k for k in _keys(client, prefix) if not k.startswith((f"{prefix}_leases/", f"{prefix}_runs/"))]


@pytest.fixture(scope="module")
def first_run(s3, s3_flags):
    """One nightly run with everything in s3://."""
    code = execute(_config(f"s3://{BUCKET}/out"), [SAMPLE_DATE], s3_flags)
    return _snapshot(s3, code)


@pytest.fixture(scope="module")
def rerun(s3, s3_flags, first_run):
    """The same date again, after a stale shard appeared in the partition and a killed run left staging behind."""
    s3.put_object(Bucket=BUCKET, Key=STALE_SHARD, Body=b"junk")
    s3.put_object(Bucket=BUCKET, Key=KILLED_RUN_LEFTOVER, Body=b"junk")
    code = execute(_config(f"s3://{BUCKET}/out"), [SAMPLE_DATE], s3_flags)
    return _snapshot(s3, code)


@pytest.fixture(scope="module")
def local_scores(sample_dir, bundle_dir, tmp_path_factory):
    """The same inputs and bundle scored on a local disk: the reference the s3:// run must equal."""
    output = tmp_path_factory.mktemp("local") / "out"
    config = sample_config(sample_dir, bundle_dir, output, date=SAMPLE_DATE)
    assert execute(config, [SAMPLE_DATE], []) == 0
    partition = output / f"dt={SAMPLE_DATE}"
    return pa.concat_tables([pq.read_table(p) for p in sorted(partition.glob("scores-*.parquet"))])


def test_s3_run_publishes_the_partition(first_run):
    assert first_run["code"] == 0
    names = {k.rsplit("/", 1)[-1] for k in first_run["keys"]}
    assert {"summary.json", "report.md", "_SUCCESS"} <= names
    assert _shards(first_run["keys"], "scores") and _shards(first_run["keys"], "rejects")
    manifest = json.loads(first_run["success"])
    assert manifest["run_id"] == first_run["summary"]["run_id"] and manifest["rows"] == first_run["summary"]["rows"]
    listed = {f"{PARTITION}{entry['name']}" for entry in manifest["files"] if entry["kind"] != "report"}
    assert listed == set(_shards(first_run["keys"], "scores") + _shards(first_run["keys"], "rejects"))
    assert first_run["summary"]["output"] == f"s3://{BUCKET}/{PARTITION.rstrip('/')}"
    assert all(
        f.startswith(f"s3://{BUCKET}/in/reviews/dt={SAMPLE_DATE}/")
        for f in first_run["summary"]["input_files"]["reviews"]
    )


def test_s3_scored_plus_rejected_equals_read(first_run):
    rows = first_run["summary"]["rows"]
    assert first_run["scores"].num_rows == rows["scored"] and first_run["rejects"].num_rows == rows["rejected"]
    assert rows["scored"] + rows["rejected"] == rows["read"] == 300
    assert sum(first_run["summary"]["rejected_by_reason"].values()) == rows["rejected"]


def test_s3_scores_equal_a_local_run(first_run, local_scores):
    assert first_run["scores"].sort_by("review_id").equals(local_scores.sort_by("review_id"))


def test_s3_run_leaves_nothing_in_staging_and_releases_its_lease(first_run):
    assert first_run["staging"] == []
    lease_key, mark_key = sorted(first_run["leases"])  # the lease and the mark of its release
    assert lease_key.startswith(f"{STAGING}_leases/dt={SAMPLE_DATE}/lease-") and lease_key.endswith(".json")
    assert mark_key == lease_key.removesuffix(".json") + ".released"


def test_s3_rerun_replaces_the_partition_completely(first_run, rerun):
    assert rerun["code"] == 0
    assert STALE_SHARD not in rerun["keys"]
    old, new = set(_shards(first_run["keys"], "scores")), set(_shards(rerun["keys"], "scores"))
    assert new and not (old & new)
    assert not set(_shards(first_run["keys"], "rejects")) & set(_shards(rerun["keys"], "rejects"))
    rows = rerun["summary"]["rows"]
    assert rerun["scores"].num_rows == rows["scored"] and rerun["rejects"].num_rows == rows["rejected"]
    assert rows["scored"] + rows["rejected"] == rows["read"] == 300
    assert json.loads(rerun["success"])["run_id"] == rerun["summary"]["run_id"] != first_run["summary"]["run_id"]
    assert rerun["scores"].sort_by("review_id").equals(first_run["scores"].sort_by("review_id"))
    # Everything this run staged was moved into place; only the killed run's planted object may remain.
    assert [k for k in rerun["staging"] if k != KILLED_RUN_LEFTOVER] == []


def test_s3_rerun_removes_a_killed_runs_staging_for_its_partition(rerun):
    assert KILLED_RUN_LEFTOVER not in rerun["staging"], rerun["staging"]


class _InjectedPublishFailure(RuntimeError):
    """Raised in place of the publish: the run fails after its shards were staged, before anything is published."""


def _failing_swap(*args, **kwargs):
    raise _InjectedPublishFailure("injected publish failure")


@pytest.fixture(scope="module")
def failed_run(s3, s3_flags):
    """A run whose publish step fails after its scores and rejects shards are in s3:// staging."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr("pipeline.publish.parquet.ParquetFolders.publish", _failing_swap)  # FnApiRunner runs the DoFn here
        code = execute(_config(f"s3://{BUCKET}/broken-out"), [SAMPLE_DATE], s3_flags)
    return {
        "code": code,
        "err": err.getvalue(),
        "output": _keys(s3, "broken-out/"),
        "staging": _staging_keys(s3, "broken-out.staging/"),
    }


def test_s3_failed_run_publishes_nothing(failed_run):
    assert failed_run["code"] == 1
    errors = [line for line in failed_run["err"].splitlines() if line.startswith("sentiment-score: error:")]
    assert len(errors) == 1 and "injected publish failure" in errors[0], failed_run["err"]
    assert failed_run["output"] == []  # no partition, no _SUCCESS
    # The failure is injected into the publish, i.e. after the shards were staged; the twin below checks cleanup.


def test_s3_failed_run_removes_its_staging(failed_run):
    assert failed_run["staging"] == [], failed_run["staging"]


def test_s3_missing_model_fails_naming_it_and_writes_nothing(s3, s3_flags, capsys):
    capsys.readouterr()
    missing = f"s3://{BUCKET}/missing-model"
    code = execute(_config(f"s3://{BUCKET}/failed-out", model_dir=missing), [SAMPLE_DATE], s3_flags)
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("sentiment-score: error:")]
    assert len(errors) == 1 and missing in errors[0], err
    assert _keys(s3, "failed-out") == []


def test_s3_missing_review_day_fails_naming_it_and_writes_nothing(s3, s3_flags, capsys):
    capsys.readouterr()
    day = "2026-11-20"
    config = _config(f"s3://{BUCKET}/failed-day", date=day)
    code = execute(config, [day], s3_flags)
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("sentiment-score: error:")]
    assert len(errors) == 1 and f"s3://{BUCKET}/in/reviews/dt={day}" in errors[0], err
    assert _keys(s3, "failed-day") == []


# ---------------------------------------------------------------------------------------------------------------------
# The publish protocol and the lease on the object store itself


class _Crash(RuntimeError):
    """Stands for the launcher or worker dying at that point of the publish."""


def _stage_on_s3(client, prefix: str, run: str, ids: list[list[int]]) -> list[dict]:
    shards = []
    for i, chunk in enumerate(ids):
        sink = io.BytesIO()
        pq.write_table(pa.table({"review_id": pa.array(chunk, pa.int64())}), sink)
        key = f"{prefix}scores-{run}-{i:04d}.parquet"
        client.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue())
        shards.append(Shard("scores", f"s3://{BUCKET}/{key}", len(chunk)))
    return shards


def _publish_on_s3(client, partition: str, run: str, ids: list[list[int]]) -> dict:
    read = sum(len(c) for c in ids)
    facts = PartitionFacts(run, "m", RowCounts(read, read, 0), partition=SAMPLE_DATE)
    shards = _stage_on_s3(client, f"faults.staging/{run}/", run, ids)
    return publish_partition(shards, partition, facts, {"summary.json": json.dumps({"run_id": run}).encode()})


def _manifest_ids_on_s3(client, partition: str) -> list[int]:
    manifest = read_manifest(partition)
    prefix = partition[len(f"s3://{BUCKET}/") :]
    keys = [f"{prefix}/{e['name']}" for e in manifest["files"] if e["kind"] == "scores"]
    return sorted(_table(client, keys)["review_id"].to_pylist())


@pytest.mark.parametrize("crash_after", PARQUET_PUBLISH)
def test_s3_a_crash_at_any_publish_step_leaves_the_old_or_the_new_partition(s3, s3_flags, crash_after):
    FileSystems.set_options(PipelineOptions(s3_flags))
    partition = f"s3://{BUCKET}/faults-{crash_after}/dt={SAMPLE_DATE}"
    _publish_on_s3(s3, partition, "run-old", [[1, 2, 3], [4, 5]])
    seen = []

    def crash(step):
        check = check_partition(partition)
        assert check.complete, f"after {step}: {check.message}"
        seen.append(read_manifest(partition)["run_id"])
        assert _manifest_ids_on_s3(s3, partition) in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])
        assert published_summary(partition)["run_id"] == seen[-1]  # the reports of the manifest's run only
        if step == crash_after:
            raise _Crash(step)

    with failpoints.armed(PARQUET_PUBLISH, crash), pytest.raises(_Crash):
        _publish_on_s3(s3, partition, "run-new", [[1, 2], [3, 4, 5, 6]])
    after_manifest = PARQUET_PUBLISH.index(crash_after) >= PARQUET_PUBLISH.index("parquet.manifest")
    assert seen[-1] == ("run-new" if after_manifest else "run-old")
    _publish_on_s3(s3, partition, "run-next", [[1, 2, 3, 4, 5, 6, 7]])
    assert check_partition(partition).complete and _manifest_ids_on_s3(s3, partition) == [1, 2, 3, 4, 5, 6, 7]
    keys = _keys(s3, f"faults-{crash_after}/dt={SAMPLE_DATE}/")
    assert all("run-next" in k for k in _shards(keys, "scores"))  # what no manifest listed is gone


def test_s3_two_processes_racing_for_a_lease_never_both_win(s3, s3_flags):
    control = f"s3://{BUCKET}/race.staging"
    context = clean_processes()  # each child makes its own boto3 clients
    results = context.Queue()
    rounds = 12
    for i in range(rounds):
        barrier = context.Barrier(2)
        args = [(s3_flags, control, f"day-{i}", f"run-{i}-{k}", barrier, results) for k in range(2)]
        workers = [context.Process(target=race_for_lease, args=a) for a in args]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
            assert w.exitcode == 0
    outcomes = [results.get(timeout=10) for _ in range(2 * rounds)]
    FileSystems.set_options(PipelineOptions(s3_flags))
    for i in range(rounds):
        won = [o for o in outcomes if o[0] == f"day-{i}" and o[2] == "won"]
        assert len(won) == 1, outcomes
        assert lease.current(lease_folder(control, f"day-{i}")).run_id == won[0][1]


@pytest.mark.slow
def test_s3_run_without_date_leaves_a_live_dated_runs_staging_alone(s3, s3_flags):
    """Issue 17 item 7: the cleanup of dead staging used to match every run's every object for the unpartitioned
    output (`control/*/**`) and deleted a live dated run's shards; now it names one partition's folders only."""
    import time

    FileSystems.set_options(PipelineOptions(s3_flags))
    control = f"s3://{BUCKET}/shared.staging"
    lease.acquire(lease_folder(control, SAMPLE_DATE), "live-run", time.time(), 3600)  # a dated run in flight
    live = f"shared.staging/live-run/dt={SAMPLE_DATE}/scores-live-run-0.parquet"
    dead = "shared.staging/dead-run/_output/scores-dead-run-0.parquet"  # a killed unpartitioned run's leftover
    for key in (live, dead):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"staged")
    config = _config(f"s3://{BUCKET}/shared", reviews=f"s3://{BUCKET}/in/reviews/dt={SAMPLE_DATE}", date=None)
    assert execute(config, None, s3_flags) == 0
    keys = _keys(s3, "shared.staging/")
    assert live in keys  # the live run's staging is untouched
    assert dead not in keys  # the twin: the dead run's staging of the partition this run held is gone
