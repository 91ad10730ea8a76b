"""The DAG's two sensors, `verify --config` and `pipeline.cli.input_ready --config`, read storage with the config's
`beam:` filesystem options, as the job does: tested against the loopback S3 server (moto)."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.publish.parquet import ParquetFolders
from pipeline.publish.publisher import PartitionFacts, RowCounts
from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, s3_client
from tests.pipeline.test_command_line import sentiment_score
from transforms.io import Shard

DAY = "2026-11-28"
BUCKET = "sensors"
SCORES = pa.schema([("review_id", pa.int64()), ("sentiment_score", pa.float32())])


def _env() -> dict:
    """No credentials or endpoint from the environment: only the config can name them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def _config(tmp_path, endpoint: str, output: str, reviews: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"reviews: {reviews}\noutput: {output}\nbeam:\n  s3_endpoint_url: {endpoint}\n"
        f"  s3_access_key_id: {S3_ACCESS_KEY}\n  s3_secret_access_key: {S3_SECRET_KEY}\n  s3_region_name: {S3_REGION}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tmp_path_factory):
    """A bucket holding one published Parquet partition (published locally, then uploaded) and one day of input."""
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("published")
    staged = local / "staged"
    staged.mkdir()
    pq.write_table(pa.table([[1, 2], [0.2, 0.8]], schema=SCORES), staged / "scores-r-0.parquet")
    shards = [Shard("scores", str(staged / "scores-r-0.parquet"), 2)]
    facts = PartitionFacts("r", "v", RowCounts(2, 2, 0), partition=DAY)
    ParquetFolders(str(local / "out")).publish(DAY, shards, facts, {}, lambda: None)
    for folder, _, files in os.walk(local / "out"):
        for name in files:
            path = os.path.join(folder, name)
            client.upload_file(path, BUCKET, "scores/" + os.path.relpath(path, local / "out"))
    client.upload_file(
        str(staged.parent / "out" / f"dt={DAY}" / "scores-r-0.parquet"), BUCKET, f"reviews/dt={DAY}/part-0.parquet"
    )
    return s3_endpoint


@pytest.mark.slow
def test_verify_reads_an_s3_output_with_the_configs_beam_options(bucket, tmp_path):
    config = _config(tmp_path, bucket, f"s3://{BUCKET}/scores", f"s3://{BUCKET}/reviews")
    result = sentiment_score("verify", "--config", config, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK s3://{BUCKET}/scores/dt={DAY}: complete: 2 scored + 0 rejected = 2 read" in result.stdout
    assert "verify: 1 partition(s) found" in result.stdout


@pytest.mark.slow
def test_verify_of_an_empty_s3_prefix_on_the_same_server_is_no_such_output(bucket, tmp_path):
    config = _config(tmp_path, bucket, f"s3://{BUCKET}/nothing-here", f"s3://{BUCKET}/reviews")
    result = sentiment_score("verify", "--config", config, env=_env())
    assert result.returncode == 2
    assert f"no such output: s3://{BUCKET}/nothing-here" in result.stderr


def _input_ready(config: str, date: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.input_ready", "--config", config, "--date", date],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )


@pytest.mark.slow
def test_the_input_sensor_reads_s3_with_the_configs_beam_options(bucket, tmp_path):
    result = _input_ready(_config(tmp_path, bucket, f"s3://{BUCKET}/scores", f"s3://{BUCKET}/reviews"), DAY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"ready: s3://{BUCKET}/reviews/dt={DAY}/part-0.parquet\n"


@pytest.mark.slow
def test_the_input_sensor_waits_for_a_day_the_s3_input_does_not_hold(bucket, tmp_path):
    result = _input_ready(_config(tmp_path, bucket, f"s3://{BUCKET}/scores", f"s3://{BUCKET}/reviews"), "2026-11-29")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"waiting: no _SUCCESS or *.parquet in s3://{BUCKET}/reviews/dt=2026-11-29")
