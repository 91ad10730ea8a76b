"""The whole scoring pipeline on real Parquet, a real trained bundle and Beam's FnApiRunner."""

import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from pipeline.run.graph import build_pipeline
from pipeline.run.launcher import execute
from pipeline.run.plan import plan_run
from pipeline.training.train import load_training_rows
from tests.conftest import SAMPLE_DATE, partition_report, partition_summary, sample_config, score_args, shard_paths
from transforms.featurize import Featurizer
from transforms.schema import Columns
from transforms.validate import REASONS

# The pipeline's scores against Keras predict: XLA stays within 1e-6 here; LiteRT (a converted graph, XNNPACK
# kernels) within the 1e-5 the runtimes are held to (model.runtime.PARITY_TOLERANCE), measured 4.9e-6 here.
PARITY_TOLERANCE = {"tensorflow": 1e-6, "litert": 1e-5}


def expected_scores(sample_dir, bundle, date=SAMPLE_DATE) -> dict:
    """In-process reference: the same featurization and model, called directly with Keras predict."""
    rows, _ = load_training_rows(str(sample_dir / "customers"), str(sample_dir / "reviews" / f"dt={date}"), Columns())
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(rows, "review_text")
    scores = bundle.model.predict([numeric, tokens], verbose=0).reshape(-1)
    return dict(zip(rows["review_id"].to_pylist(), scores.tolist()))


def _score_rows(element):
    _, table = element
    return list(zip(table["review_id"].to_pylist(), table["sentiment_score"].to_pylist()))


class ScoresClose:
    """A picklable matcher: exactly the expected review ids, each score within the parity tolerance."""

    def __init__(self, expected: dict, tolerance: float = PARITY_TOLERANCE["tensorflow"]):
        self.expected = expected
        self.tolerance = tolerance

    def __call__(self, actual):
        got = dict(actual)
        if len(got) != len(actual):
            raise BeamAssertException(f"{len(actual) - len(got)} review ids scored twice")
        if set(got) != set(self.expected):
            raise BeamAssertException(f"scored ids differ: {sorted(set(got) ^ set(self.expected))[:10]}")
        worst = max(abs(got[k] - self.expected[k]) for k in got)
        if worst > self.tolerance:
            raise BeamAssertException(f"largest score difference {worst} > {self.tolerance}")


def _read_dir(directory, kind):
    files = shard_paths(directory, kind)
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


@pytest.fixture(scope="module")
def nightly(sample_dir, bundle_dir, tmp_path_factory):
    """One CLI-equivalent run of the sample day, in process."""
    output = tmp_path_factory.mktemp("nightly") / "out"
    config = sample_config(sample_dir, bundle_dir, output, date=SAMPLE_DATE)
    assert execute(config, [SAMPLE_DATE], []) == 0
    return output / f"dt={SAMPLE_DATE}"


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
@pytest.mark.slow
def test_test_pipeline_scores_equal_in_process_prediction(sample_dir, bundle_dir, bundle, tmp_path, runtime):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", date=SAMPLE_DATE, runtime=runtime)
    plan = plan_run(config, [SAMPLE_DATE])
    expected = expected_scores(sample_dir, bundle)
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        outputs = build_pipeline(p, config, plan)
        assert_that(outputs["scores"] | beam.FlatMap(_score_rows), ScoresClose(expected, PARITY_TOLERANCE[runtime]))
    assert len(expected) > 250


@pytest.mark.slow
def test_partition_layout_and_invariant(nightly):
    names = sorted(os.listdir(nightly))
    # What a Hive-convention reader of the folder sees: score shards; rejects and reports under "_" names.
    assert {n for n in names if not n.startswith("scores-")} == {"_SUCCESS", "_rejects", "_report"}
    assert shard_paths(nightly, "scores") and shard_paths(nightly, "rejects")
    assert "Score histogram" in partition_report(nightly)
    summary = partition_summary(nightly)
    scores, rejects = _read_dir(nightly, "scores"), _read_dir(nightly, "rejects")
    rows = summary["rows"]
    assert rows["scored"] == scores.num_rows and rows["rejected"] == rejects.num_rows
    assert rows["scored"] + rows["rejected"] == rows["read"] == 300
    assert sum(summary["rejected_by_reason"].values()) == rows["rejected"]
    assert summary["rejected_by_reason"] == dict(
        zip(*np.unique(rejects["reason"].to_numpy(zero_copy_only=False), return_counts=True))
    )


@pytest.mark.slow
def test_scores_schema_and_values(nightly, bundle):
    scores = _read_dir(nightly, "scores")
    assert scores.schema.names == ["review_id", "customer_id", "sentiment_score", "model_version"]
    assert scores.schema.field("sentiment_score").type == pa.float32()
    values = scores["sentiment_score"].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    assert set(scores["model_version"].to_pylist()) == {bundle.model_version}
    assert len(set(scores["review_id"].to_pylist())) == scores.num_rows


@pytest.mark.slow
def test_sample_dirty_rows_are_rejected_with_reasons(nightly):
    rejects = _read_dir(nightly, "rejects")
    reasons = set(rejects["reason"].to_pylist())
    assert "missing_customer" in reasons
    assert reasons <= set(REASONS)
    assert rejects.schema.names[:4] == ["review_id", "customer_id", "reason", "detail"]
    missing = rejects.filter(pa.compute.equal(rejects["reason"], "missing_customer"))
    assert missing["age"].null_count == missing.num_rows  # raw inputs ride along: no customer, no features


@pytest.mark.slow
def test_summary_reports_quantiles_histogram_and_run_facts(nightly, bundle):
    summary = partition_summary(nightly)
    assert summary["model_version"] == bundle.model_version and summary["date"] == SAMPLE_DATE
    q = summary["score_quantiles"]
    assert q["min"] <= q["p05"] <= q["p50"] <= q["p95"] <= q["max"]
    assert sum(summary["score_histogram"]["counts"]) == summary["rows"]["scored"]
    assert summary["input_files"]["reviews"][0].endswith(".parquet")
    assert summary["wall_time_seconds"] > 0 and summary["rows_per_second"] > 0
    assert 0 <= summary["oov_rate"] < 0.5
    manifest = json.loads((nightly / "_SUCCESS").read_text())
    assert manifest["run_id"] == summary["run_id"] and manifest["rows"] == summary["rows"]


@pytest.mark.slow
def test_multi_processing_gives_the_same_scores(sample_dir, bundle_dir, nightly, tmp_path):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "mp", date=SAMPLE_DATE)
    code = execute(config, [SAMPLE_DATE], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert code == 0
    single = _read_dir(nightly, "scores").sort_by("review_id")
    multi = _read_dir(tmp_path / "mp" / f"dt={SAMPLE_DATE}", "scores").sort_by("review_id")
    assert multi.equals(single)


@pytest.mark.slow
def test_multi_processing_on_tensorflow_shares_one_model_and_gives_the_same_scores(
    sample_dir, bundle_dir, nightly, tmp_path
):
    # The tensorflow runtime is shared across worker processes (RunInference's share_model_across_processes): the
    # workers call it through a proxy, so this is the path where the model lives in another process.
    config = sample_config(sample_dir, bundle_dir, tmp_path / "mp", date=SAMPLE_DATE, runtime="tensorflow")
    code = execute(config, [SAMPLE_DATE], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert code == 0
    single = _read_dir(nightly, "scores").sort_by("review_id")  # litert, in one process
    multi = _read_dir(tmp_path / "mp" / f"dt={SAMPLE_DATE}", "scores").sort_by("review_id")
    assert multi["review_id"].equals(single["review_id"]) and multi["model_version"].equals(single["model_version"])
    difference = np.abs(multi["sentiment_score"].to_numpy() - single["sentiment_score"].to_numpy())
    assert difference.max() <= PARITY_TOLERANCE["tensorflow"] + PARITY_TOLERANCE["litert"]  # each within its own


@pytest.mark.slow
def test_rerun_replaces_the_partition_completely(sample_dir, bundle_dir, tmp_path):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", date=SAMPLE_DATE, read_batch_size=64)
    assert execute(config, [SAMPLE_DATE], []) == 0
    partition = tmp_path / "out" / f"dt={SAMPLE_DATE}"
    first = set(os.listdir(partition))
    (partition / "scores-stale-from-elsewhere.parquet").write_bytes(b"junk")
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", date=SAMPLE_DATE)
    assert execute(config, [SAMPLE_DATE], []) == 0
    second = set(os.listdir(partition))
    assert "scores-stale-from-elsewhere.parquet" not in second
    assert not (first & second) - {"_SUCCESS", "_rejects", "_report"}
    assert len(os.listdir(partition / "_report")) == 1  # the previous run's reports went with its shards
    summary = partition_summary(partition)
    assert _read_dir(partition, "scores").num_rows == summary["rows"]["scored"]
    # Staging is removed once the partition is published; beside the output stay the lease and run records.
    assert sorted(os.listdir(tmp_path / "out.staging")) == ["_leases", "_runs"]


@pytest.mark.slow
def test_backfill_writes_each_day_with_its_own_summary_and_compares_to_the_previous(sample_dir, bundle_dir, tmp_path):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out")
    assert execute(config, ["2026-11-26", "2026-11-27", SAMPLE_DATE], [], backfill=True) == 0
    assert not (tmp_path / "out" / "dt=2026-11-26").exists()  # no input that day: skipped, not failed
    first = partition_summary(tmp_path / "out" / "dt=2026-11-27")
    second = partition_summary(tmp_path / "out" / f"dt={SAMPLE_DATE}")
    assert first["run_id"] == second["run_id"]  # one pipeline
    assert first["rows"]["read"] == second["rows"]["read"] == 300
    assert second["drift"]["previous_date"] == "2026-11-27" and second["drift"]["psi"] is not None
    assert "Drift against previous partition" in partition_report(tmp_path / "out" / f"dt={SAMPLE_DATE}")


@pytest.mark.slow
def test_backfill_skip_existing_leaves_complete_days_alone(sample_dir, bundle_dir, tmp_path):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out")
    assert execute(config, [SAMPLE_DATE], [], backfill=True) == 0
    marker = tmp_path / "out" / f"dt={SAMPLE_DATE}" / "_SUCCESS"
    before = marker.read_text()
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", skip_existing=True)
    assert execute(config, ["2026-11-27", SAMPLE_DATE], [], backfill=True) == 0
    assert marker.read_text() == before
    assert (tmp_path / "out" / "dt=2026-11-27" / "_SUCCESS").exists()


@pytest.mark.slow
def test_cli_subprocess_scores_and_reports(sample_dir, bundle_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *score_args(sample_dir, bundle_dir, tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"dt={SAMPLE_DATE}: read 300" in result.stdout
    assert "done:" in result.stdout and "= 300 read" in result.stdout
    assert (tmp_path / "o" / f"dt={SAMPLE_DATE}" / "_SUCCESS").exists()
