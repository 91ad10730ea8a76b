"""A thousand small review files on an object store (moto on loopback): planned from their footers, all scored."""

import concurrent.futures
import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.run.launcher import execute
from pipeline.run.plan import plan_run
from tests.conftest import SAMPLE_DATE, run_config, s3_client
from transforms.io import SMALL_OBJECT_BYTES, ReadParquetBatches, RowGroupRanges, inspect_files, plan_read_tasks
from transforms.schema import InputError, RunSchema

# Every test here is slow (make test-fast skips them): pipelines and plans over hundreds of files, and loopback S3.
pytestmark = pytest.mark.slow

BUCKET = "sentiment-many-files"
FILES, ROWS = 1000, 3
BAD_DAY = "2026-11-27"
SCORED_DAY, SCORED_FILES = "2026-11-26", 150  # scored end to end: every file read twice (ids, then rows)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_endpoint, sample_dir, bundle_dir):
    """The sample customers and bundle, 1,000 review files of 3 rows for SAMPLE_DATE, a day with 100 files of which
    two (the 38th and the 81st) are not Parquet, and a day of 150 files to score."""
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    reviews = pq.read_table(next((sample_dir / "reviews" / f"dt={SAMPLE_DATE}").glob("*.parquet")))
    objects = {}
    for path in sorted((sample_dir / "customers").glob("*.parquet")):
        objects[f"in/customers/{path.name}"] = path.read_bytes()
    for i in range(FILES):
        rows = reviews.take(pa.array(np.arange(i * ROWS, (i + 1) * ROWS) % reviews.num_rows))
        rows = rows.set_column(0, "review_id", pa.array(np.arange(i * ROWS, (i + 1) * ROWS) + 10**9))
        objects[f"in/reviews/dt={SAMPLE_DATE}/part-{i:05d}.parquet"] = _parquet(rows)
    for i in range(max(100, SCORED_FILES)):
        good = objects[f"in/reviews/dt={SAMPLE_DATE}/part-{i:05d}.parquet"]
        if i < 100:
            objects[f"in/reviews/dt={BAD_DAY}/part-{i:05d}.parquet"] = b"not parquet" if i in (37, 80) else good
        if i < SCORED_FILES:
            objects[f"in/reviews/dt={SCORED_DAY}/part-{i:05d}.parquet"] = good
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file():
            objects[f"model/{path.relative_to(bundle_dir).as_posix()}"] = path.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), objects.items()))
    return client


def _config(output: str, date: str = SAMPLE_DATE):
    paths = {"customers": f"s3://{BUCKET}/in/customers", "reviews": f"s3://{BUCKET}/in/reviews", "output": output}
    return run_config(paths, f"s3://{BUCKET}/model", date=date)


def test_a_thousand_files_are_planned_from_their_footers_in_order(bucket, s3_flags):
    FileSystems.set_options(PipelineOptions(s3_flags))
    started = time.perf_counter()
    plan = plan_run(_config(f"s3://{BUCKET}/planned"), [SAMPLE_DATE])
    elapsed = time.perf_counter() - started
    files = plan.review_files
    assert [f.path.rsplit("/", 1)[1] for f in files] == [f"part-{i:05d}.parquet" for i in range(FILES)]
    assert [f.index for f in files] == list(range(FILES))
    assert all(f.num_rows == ROWS and f.row_group_rows == (ROWS,) and f.partition == SAMPLE_DATE for f in files)
    assert plan.rows_by_partition == {SAMPLE_DATE: FILES * ROWS}
    # One ranged GET per footer, 10 at a time: ~4 s here; one client per file (Beam's open) took ~0.45 s a file.
    assert elapsed < 120, elapsed


def test_footers_read_at_once_equal_footers_read_one_by_one(bucket, s3_flags):
    FileSystems.set_options(PipelineOptions(s3_flags))
    paths = [(f"s3://{BUCKET}/in/reviews/dt={SAMPLE_DATE}/part-{i:05d}.parquet", i, SAMPLE_DATE) for i in range(50)]
    at_once = inspect_files(paths, threads=10)
    one_by_one = inspect_files(paths, threads=1)
    assert [info for info, _ in at_once] == [info for info, _ in one_by_one]
    assert all(schema.equals(other) for (_, schema), (_, other) in zip(at_once, one_by_one, strict=True))


def test_a_file_that_is_not_parquet_among_many_fails_planning_naming_the_first(bucket, s3_flags):
    FileSystems.set_options(PipelineOptions(s3_flags))
    with pytest.raises(InputError, match=rf"s3://{BUCKET}/in/reviews/dt={BAD_DAY}/part-00037\.parquet: not a readable"):
        plan_run(_config(f"s3://{BUCKET}/bad", BAD_DAY), [BAD_DAY])


def test_many_small_files_are_scored_completely(bucket, s3_flags):
    output = f"s3://{BUCKET}/out"
    assert execute(_config(output, SCORED_DAY), [SCORED_DAY], s3_flags) == 0
    manifest = json.loads(bucket.get_object(Bucket=BUCKET, Key=f"out/dt={SCORED_DAY}/_SUCCESS")["Body"].read())
    key = f"out/dt={SCORED_DAY}/{manifest['summary']}"
    summary = json.loads(bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    rows = summary["rows"]
    assert rows["read"] == SCORED_FILES * ROWS == rows["scored"] + rows["rejected"]
    assert len(summary["input_files"]["reviews"]) == SCORED_FILES


def test_a_file_larger_than_one_request_is_read_the_same_from_s3(bucket, s3_flags, tmp_path):
    FileSystems.set_options(PipelineOptions(s3_flags))
    rng = np.random.default_rng(1)
    n = 3000
    texts = pa.array([rng.bytes(4000).hex() for _ in range(n)])  # ~24 MB, incompressible: past SMALL_OBJECT_BYTES
    table = pa.table({"review_id": np.arange(n), "customer_id": np.arange(n), "review_text": texts})
    local = tmp_path / "large.parquet"
    pq.write_table(table, local, row_group_size=1000)
    assert local.stat().st_size > SMALL_OBJECT_BYTES
    bucket.put_object(Bucket=BUCKET, Key="large/large.parquet", Body=local.read_bytes())
    schema = RunSchema().reviews_schema()
    read = []
    for path in (f"s3://{BUCKET}/large/large.parquet", str(local)):
        ((info, _),) = inspect_files([(path, 0, "")])
        fn = ReadParquetBatches(schema, batch_size=700)
        tables = []
        for task in plan_read_tasks([info], rows_per_task=1000):
            tracker = RowGroupRanges().create_tracker(RowGroupRanges().initial_restriction(task))
            tables += [t for _, t in fn.process(task, tracker)]
        read.append(pa.concat_tables(tables))
    assert read[0].num_rows == n and read[0].equals(read[1])
