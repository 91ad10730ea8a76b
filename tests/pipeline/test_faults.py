"""Faults: a killed run, reruns over an existing partition, failed runs, determinism and per-row inference isolation."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.bundle import save_bundle
from model.runtime import RUNTIMES
from model.runtime import TensorflowRuntime as ModelScorer
from pipeline import failpoints
from pipeline.publish.parquet import check_partition
from pipeline.run.config import build_config
from pipeline.run.launcher import execute
from pipeline.training.sample_data import write_sample_data
from tests.conftest import corrupt_first_page_header, file_hashes, partition_summary, run_handler, shard_paths
from tests.readers import assert_parquet_readers_see
from transforms.featurize import NUMERIC, TOKENS, Featurizer, matrix_column
from transforms.inference import ScoreReviews, TensorflowModelHandler
from transforms.isolation import score_with_isolation
from transforms.schema import RunSchema

DATE = "2026-11-28"
PARTITION_FILES = {"_SUCCESS", "_rejects", "_report"}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def sample(root, reviews: int, seed: int = 21, rows_per_file: int = 250_000) -> dict:
    """Sample data for one day under root; returns the customers, reviews and output settings."""
    write_sample_data(str(root), reviews=reviews, days=1, seed=seed, end_date=DATE, rows_per_file=rows_per_file)
    return {"customers": f"{root}/customers", "reviews": f"{root}/reviews", "output": f"{root}/out"}


def score(capsys=None, take_over_lease=False, **settings) -> tuple[int, str]:
    """One in-process run of DATE on litert unless settings name another runtime; returns the exit code and what it
    printed on stderr."""
    if capsys is not None:
        capsys.readouterr()
    config = build_config({"beam": {"runner": "FnApiRunner"}, "runtime": "litert", "date": DATE, **settings})
    code = execute(config, [DATE], [], take_over_lease=take_over_lease)
    return code, capsys.readouterr().err if capsys is not None else ""


def read_tail(path, size: int = 3000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-size:]


def partition_of(output: str) -> str:
    return os.path.join(output, f"dt={DATE}")


def rows_in(pattern: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in glob.glob(pattern))


def read_summary(partition: str) -> dict:
    return partition_summary(partition)


def input_review_ids(paths: dict) -> list[int]:
    files = sorted(glob.glob(f"{paths['reviews']}/dt={DATE}/*.parquet"))
    return sorted(pa.concat_tables([pq.read_table(p, columns=["review_id"]) for p in files])["review_id"].to_pylist())


def assert_complete(partition: str, read: int) -> dict:
    """The partition is published: _SUCCESS, the row invariant, and no shard the summary does not account for."""
    assert os.path.isfile(os.path.join(partition, "_SUCCESS"))
    summary = read_summary(partition)
    rows = summary["rows"]
    assert rows["read"] == read
    assert rows["scored"] + rows["rejected"] == read
    assert rows_in(f"{partition}/scores-*.parquet") == rows["scored"]
    assert rows_in(f"{partition}/_rejects/rejects-*.parquet") == rows["rejected"]
    names = set(os.listdir(partition))
    shards = {n for n in names if n.endswith(".parquet")}
    assert names - shards == PARTITION_FILES  # a Hive reader of the folder sees score shards only
    assert all(n.startswith("scores-") for n in shards)
    assert all(n.startswith("rejects-") for n in os.listdir(os.path.join(partition, "_rejects")))
    with open(os.path.join(partition, "_SUCCESS"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["run_id"] == summary["run_id"] and manifest["rows"] == rows
    listed = {entry["name"] for entry in manifest["files"] if entry["kind"] != "report"}
    rejects = {f"_rejects/{n}" for n in os.listdir(os.path.join(partition, "_rejects"))}
    assert listed == shards | rejects  # the manifest lists exactly the shards there
    check = check_partition(partition)
    assert check.complete, check.message
    assert_parquet_readers_see(
        os.path.dirname(partition), os.path.basename(partition).removeprefix("dt="), rows["scored"]
    )
    return summary


def output_ids(partition: str) -> list[int]:
    ids = []
    for kind in ("scores", "rejects"):
        for path in shard_paths(partition, kind):
            ids += pq.read_table(path, columns=["review_id"])["review_id"].to_pylist()
    return sorted(ids)


# ---------------------------------------------------------------------------------------------------------------------
# A run killed while writing, then rerun


REVIEWS_STOPPED_MID_RUN = 6000


def start_stopped_mid_run(paths: dict, bundle_dir, log_path, **popen) -> subprocess.Popen:
    """Starts `score` as a subprocess that stops itself (SIGSTOP) once its first score shard is written and closed in
    staging, before the commit (the failpoint score.shard-written), and returns it stopped there.

    waitpid(WUNTRACED) blocks until the child stops: the test then kills or signals a run paused at a known point
    mid-way, on any machine, instead of polling the filesystem and racing a run that may finish first. The runtime
    is named so the run does not depend on what `auto` picks for its size.
    """
    command = [sys.executable, "-m", "pipeline", "score", "--customers", paths["customers"], "--reviews"]
    command += [paths["reviews"], "--model-dir", str(bundle_dir), "--output", paths["output"], "--date", DATE]
    command += ["--runtime", "litert", "--runner=FnApiRunner"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", failpoints.ENV: "score.shard-written=1*sigstop"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, **popen)
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
    except BaseException:
        process.kill()
        process.wait(timeout=60)
        raise
    if not os.WIFSTOPPED(status):
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
        raise AssertionError(f"the run ended ({process.returncode}) before it stopped:\n{read_tail(log_path)}")
    assert "model runtime litert (setting 'litert'" in read_tail(log_path, 100_000)
    return process


@pytest.mark.slow
def test_killed_run_publishes_nothing_and_a_rerun_completes(tmp_path, bundle_dir, capsys):
    paths = sample(tmp_path / "data", reviews=REVIEWS_STOPPED_MID_RUN)
    output = paths["output"]
    process = start_stopped_mid_run(paths, bundle_dir, tmp_path / "killed.log", cwd=tmp_path, start_new_session=True)
    os.killpg(process.pid, signal.SIGKILL)  # kills a stopped process too
    assert process.wait(timeout=60) == -signal.SIGKILL

    # Killed mid-run: its shard is in staging, and nothing is published.
    shards = glob.glob(f"{output}.staging/*/dt={DATE}/scores-*.parquet")
    assert shards
    killed_staging = os.path.dirname(shards[0])
    assert not glob.glob(f"{output}/**/_SUCCESS", recursive=True)
    assert not os.path.exists(partition_of(output))

    # The killed run still holds the partition's lease: a rerun fails at start-up naming it, until the lease
    # expires or the rerun takes it over explicitly.
    killed_run = os.path.basename(os.path.dirname(killed_staging))
    code, err = score(capsys, **paths, model_dir=str(bundle_dir))
    assert code == 3, err
    assert f"run {killed_run}" in err and "--take-over-lease" in err
    assert os.path.isdir(killed_staging)  # a run without the lease never touches another run's staging

    code, _ = score(**paths, model_dir=str(bundle_dir), take_over_lease=True)
    assert code == 0
    assert_complete(partition_of(output), read=REVIEWS_STOPPED_MID_RUN)
    assert output_ids(partition_of(output)) == input_review_ids(paths)  # every input row exactly once
    # The rerun removed the dead run's staging of this partition and its own.
    assert not os.path.exists(killed_staging)
    staging = f"{output}.staging"
    assert set(os.listdir(staging)) <= {"_leases", "_runs", killed_run}


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_gives_its_lease_back_so_a_retry_starts_at_once(tmp_path, bundle_dir):
    """What a scheduler's timeout does: SIGTERM, then a retry. The twin of the SIGKILL test above, whose lease stays."""
    paths = sample(tmp_path / "data", reviews=REVIEWS_STOPPED_MID_RUN)
    output = paths["output"]
    log = tmp_path / "terminated.log"
    process = start_stopped_mid_run(paths, bundle_dir, log, cwd=tmp_path)
    try:
        # Stopped with a score shard in staging and the lease held: SIGTERM is delivered as the run continues.
        assert glob.glob(f"{output}.staging/2*/dt={DATE}/scores-*.parquet")
        assert glob.glob(f"{output}.staging/_leases/dt={DATE}/lease-*.json")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=120) == 1, log.read_text()[-3000:]  # failed: the scheduler may retry
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert "stopped by signal 15 (SIGTERM)" in log.read_text()
    assert not os.path.exists(partition_of(output))  # nothing published
    assert glob.glob(f"{output}.staging/2*/dt={DATE}") == []  # its staging is gone (run folders start with the date)
    code, _ = score(**paths, model_dir=str(bundle_dir))  # no --take-over-lease needed
    assert code == 0
    assert_complete(partition_of(output), read=REVIEWS_STOPPED_MID_RUN)


@pytest.mark.slow
def test_rerun_removes_what_a_killed_run_left_in_staging(tmp_path, bundle_dir):
    paths = sample(tmp_path / "data", reviews=300)
    # What a run killed mid-write leaves: its staging directory with a partial shard of this partition.
    leftover = f"{paths['output']}.staging/20261128T010000Z-0badc0de/dt={DATE}"
    os.makedirs(leftover)
    with open(f"{leftover}/scores-0123456789abcdef.parquet", "wb") as f:
        f.write(b"PAR1 partial shard")
    code, _ = score(**paths, model_dir=str(bundle_dir))
    assert code == 0
    assert_complete(partition_of(paths["output"]), read=300)
    assert not os.path.exists(leftover)
    # The run removed its own staging and the dead run's; what stays beside the output is the lease and run records.
    assert sorted(os.listdir(f"{paths['output']}.staging")) == ["_leases", "_runs"]


# ---------------------------------------------------------------------------------------------------------------------
# Reruns over a published partition


@pytest.mark.slow
def test_rerun_with_fewer_shards_leaves_no_stale_shards(tmp_path, bundle_dir):
    paths = sample(tmp_path / "data", reviews=2000, rows_per_file=500)
    partition = partition_of(paths["output"])
    code, _ = score(
        **paths,
        model_dir=str(bundle_dir),
        read_batch_size=100,
        rows_per_read_task=100,
        beam={"runner": "FnApiRunner", "direct_num_workers": 2, "direct_running_mode": "multi_threading"},
    )
    assert code == 0
    first = assert_complete(partition, read=2000)
    first_shards = {n for n in os.listdir(partition) if n.startswith("scores-")}
    assert len(first_shards) >= 2, first_shards  # precondition: the first run wrote several score shards

    code, _ = score(**paths, model_dir=str(bundle_dir))
    assert code == 0
    second = assert_complete(partition, read=2000)
    second_shards = {n for n in os.listdir(partition) if n.startswith("scores-")}
    assert len(second_shards) < len(first_shards)
    assert not first_shards & second_shards
    assert second["run_id"] != first["run_id"]
    assert second["rows"] == first["rows"]
    assert output_ids(partition) == input_review_ids(paths)


def _replace_with_junk(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"not parquet at all\n" * 100)


@pytest.mark.parametrize(
    ("break_input", "expected_error"),
    [
        (_replace_with_junk, "not a readable Parquet file"),  # found at start-up
        (corrupt_first_page_header, "failed"),  # found while the pipeline runs, after shards may have been written
    ],
    ids=["start-up", "mid-run"],
)
@pytest.mark.slow
def test_failed_run_leaves_the_previous_partition_untouched(tmp_path, bundle_dir, capsys, break_input, expected_error):
    paths = sample(tmp_path / "data", reviews=800, rows_per_file=400)
    partition = partition_of(paths["output"])
    code, _ = score(**paths, model_dir=str(bundle_dir))
    assert code == 0
    assert_complete(partition, read=800)
    before = file_hashes(partition)

    broken = sorted(glob.glob(f"{paths['reviews']}/dt={DATE}/*.parquet"))[-1]
    break_input(broken)
    code, err = score(capsys, **paths, model_dir=str(bundle_dir))
    errors = [line for line in err.splitlines() if line.startswith("sentiment-score: error: ")]
    assert code == 1
    assert len(errors) == 1 and expected_error in errors[0], err
    assert file_hashes(partition) == before


# ---------------------------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.slow
def test_two_runs_write_identical_scores(tmp_path, bundle_dir, runtime):
    paths = sample(tmp_path / "data", reviews=600)
    tables = []
    for name in ("first", "second"):
        output = str(tmp_path / name)
        # Production settings on each runtime (on tensorflow: XLA-compiled model calls).
        code, _ = score(**{**paths, "output": output}, model_dir=str(bundle_dir), runtime=runtime, jit_compile=True)
        assert code == 0
        partition = partition_of(output)
        scores = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{partition}/scores-*.parquet")])
        rejects = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{partition}/_rejects/rejects-*.parquet")])
        tables.append((scores.sort_by("review_id"), rejects.sort_by("review_id")))
    (scores_1, rejects_1), (scores_2, rejects_2) = tables
    assert scores_1.num_rows > 500
    assert scores_1["review_id"].equals(scores_2["review_id"])
    bytes_1 = scores_1["sentiment_score"].to_numpy().tobytes()
    assert bytes_1 == scores_2["sentiment_score"].to_numpy().tobytes()
    assert scores_1.equals(scores_2)
    assert rejects_1.equals(rejects_2)


# ---------------------------------------------------------------------------------------------------------------------
# Per-row isolation of inference failures

FAILING_ROWS = (7, 31)


@pytest.fixture(scope="module")
def model_inputs(bundle):
    """50 featurized rows of real text and features, two of them with a token id beyond the embedding's range."""
    words = list(bundle.vocabulary[:40]) + ["unseenword"]
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 60)))) for _ in range(50)]
    features = {"age": rng.uniform(18, 85, 50), "purchase_history": rng.lognormal(5, 1, 50)}
    table = pa.table({**features, "review_text": texts})
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(table, "review_text")
    input_dim = next(layer.input_dim for layer in bundle.model.layers if layer.__class__.__name__ == "Embedding")
    tokens[FAILING_ROWS[0], 0] = input_dim + 3
    tokens[FAILING_ROWS[1], 10] = 10**6
    return numeric, tokens


def test_inference_failure_is_isolated_to_its_rows(bundle, model_inputs):
    numeric, tokens = model_inputs
    scorer = ModelScorer(bundle.model, batch_size=64, jit_compile=False)
    for row in FAILING_ROWS:  # precondition: the non-compiled model really fails on an out-of-range id on CPU
        with pytest.raises(Exception, match="indices|GatherV2|out of range|not in"):
            scorer.predict(numeric[row : row + 1], tokens[row : row + 1])

    scores, failed, error, systemic = score_with_isolation(scorer.predict, numeric, tokens)
    assert np.flatnonzero(failed).tolist() == list(FAILING_ROWS) and not systemic
    assert np.isnan(scores[failed]).all()
    assert error.startswith("InvalidArgumentError"), error
    alone = np.array([scorer.predict(numeric[i : i + 1], tokens[i : i + 1])[0] for i in np.flatnonzero(~failed)])
    np.testing.assert_allclose(scores[~failed], alone, rtol=0, atol=1e-6)
    assert np.all((scores[~failed] >= 0) & (scores[~failed] <= 1))


@pytest.fixture(scope="module")
def nan_on_inf_bundle_dir(bundle, tmp_path_factory):
    """The trained bundle with weights set so that an infinite first feature gives a NaN score, by construction.

    Every weight on the path from the first numeric feature to the last hidden layer is made positive, so an inf
    there reaches every head unit as +inf (ReLU passes it); the output layer then adds +inf and -inf: NaN, on any
    weights a training run produced. Finite inputs stay finite, so every other row keeps a valid score.
    """
    import keras

    model = keras.models.clone_model(bundle.model)
    model.set_weights(bundle.model.get_weights())
    first, second = model.get_layer("numeric_dense_0"), model.get_layer("numeric_dense_1")
    head, output = model.get_layer("head_dense"), model.get_layer("sentiment")
    kernel, bias = first.get_weights()
    kernel[0] = np.abs(kernel[0]) + 0.1
    first.set_weights([kernel, bias])
    kernel, bias = second.get_weights()
    second.set_weights([np.abs(kernel) + 0.1, bias])
    kernel, bias = head.get_weights()
    numeric_width = second.units  # the concatenation puts the numeric branch first
    kernel[:numeric_width] = np.abs(kernel[:numeric_width]) + 0.1
    head.set_weights([kernel, bias])
    kernel, bias = output.get_weights()
    signs = np.where(np.arange(kernel.shape[0]) % 2 == 0, 1.0, -1.0).reshape(-1, 1)
    output.set_weights([(np.abs(kernel) + 0.1) * signs, bias])
    directory = tmp_path_factory.mktemp("nan-on-inf") / "model"
    save_bundle(str(directory), model, bundle.vocabulary, bundle.tokenizer, bundle.scaler)
    return directory


def test_score_reviews_rejects_failing_rows_with_reasons(nan_on_inf_bundle_dir, model_inputs):
    numeric, tokens = model_inputs
    numeric = numeric.copy()
    numeric[40] = [np.inf, 0.0]  # reaches the model as inf: this bundle's weights make the score NaN
    n = len(numeric)
    table = pa.table(
        {
            "review_id": pa.array(range(1000, 1000 + n), pa.int64()),
            "customer_id": pa.array([5] * n, pa.int64()),
            "review_text": ["text"] * n,
            "age": pa.array([30.0] * n),
            "purchase_history": pa.array([10.0] * n),
            NUMERIC: matrix_column(numeric),
            TOKENS: matrix_column(tokens),
        }
    )
    handler = TensorflowModelHandler(str(nan_on_inf_bundle_dir), RunSchema(), batch_size=16, jit_compile=False)
    outputs = run_handler(handler, [(DATE, table)])
    scored = [o for o in outputs if isinstance(o, tuple)]
    tagged = [o for o in outputs if not isinstance(o, tuple)]
    assert len(scored) == 1 and len(tagged) == 1 and tagged[0].tag == ScoreReviews.REJECTS
    partition, scores = scored[0]
    assert partition == DATE
    _, rejects = tagged[0].value
    assert sorted(scores["review_id"].to_pylist() + rejects["review_id"].to_pylist()) == list(range(1000, 1000 + n))
    assert {r["review_id"]: r["reason"] for r in rejects.to_pylist()} == {
        1000 + FAILING_ROWS[0]: "inference_error",
        1000 + FAILING_ROWS[1]: "inference_error",
        1040: "invalid_score",
    }
    assert all("InvalidArgumentError" in r["detail"] for r in rejects.to_pylist() if r["reason"] == "inference_error")
    values = scores["sentiment_score"].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
