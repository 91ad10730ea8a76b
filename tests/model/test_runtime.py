"""The model runtimes: LiteRT and XLA scores against Keras, the bundle checked without TensorFlow, each refusal."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model.bundle import LITERT_FILE, PARITY_FILE, BundleError, check_bundle, load_preprocessing, open_runtime
from model.runtime import (
    AUTO,
    AUTO_TENSORFLOW_ROWS,
    PARITY_TOLERANCE,
    RUNTIMES,
    choose_runtime,
    max_difference,
    parity_inputs,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def probe(bundle):
    return parity_inputs(len(bundle.feature_names), bundle.sequence_length, bundle.vocab_size, rows=4097, seed=3)


@pytest.fixture(scope="module")
def keras_scores(bundle, probe):
    return np.asarray(bundle.model(list(probe), training=False)).reshape(-1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_matches_keras_within_tolerance_with_padding(bundle_dir, probe, keras_scores, runtime):
    model = open_runtime(check_bundle(str(bundle_dir)), runtime, batch_size=256, threads=2)
    numeric, tokens = probe
    for n in (1, 255, 4097):  # a padded single row, a padded batch, and more than one fixed-size call
        scores = model.predict(numeric[:n], tokens[:n])
        assert scores.shape == (n,) and scores.dtype == np.float32
        assert max_difference(scores, keras_scores[:n]) <= PARITY_TOLERANCE


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_scores_right_when_several_threads_call_at_once(bundle_dir, probe, keras_scores, runtime):
    # Beam runs bundles on several threads of a worker process, all calling the process's one runtime.
    model = open_runtime(check_bundle(str(bundle_dir)), runtime, threads=2)
    numeric, tokens = probe
    parts = [(s, min(s + 500, len(numeric))) for s in range(0, len(numeric), 500)] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: model.predict(numeric[p[0] : p[1]], tokens[p[0] : p[1]]), parts))
    for (start, stop), scores in zip(parts, results):
        assert max_difference(scores, keras_scores[start:stop]) <= PARITY_TOLERANCE


def test_parity_is_recorded_when_the_bundle_is_written(bundle):
    assert bundle.metadata["litert"]["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert bundle.metadata["files_sha256"][LITERT_FILE]


def test_a_changed_litert_file_is_refused_without_tensorflow(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / LITERT_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / LITERT_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.tflite does not match the bundle's content"):
        check_bundle(str(copy))


def test_a_runtime_that_disagrees_with_keras_is_refused_at_load(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with np.load(copy / PARITY_FILE) as probe:
        arrays = dict(probe)
    arrays["scores"] = arrays["scores"] + np.float32(1e-3)
    with open(copy / PARITY_FILE, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(BundleError, match=r"litert runtime's scores differ from the Keras model's by 0\.00"):
        open_runtime(load_preprocessing(str(copy)), "litert")  # unchecked: check_bundle would refuse the digest


def test_a_format_1_bundle_is_refused_naming_the_format(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["format_version"] = 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"format_version 1 is not 2 \(format 2 adds model\.tflite"):
        check_bundle(str(copy))


@pytest.mark.slow
def test_the_launcher_check_and_the_litert_path_import_no_tensorflow(bundle_dir):
    code = (
        "import sys; from model.bundle import check_bundle, open_runtime; import numpy as np;"
        f"pre = check_bundle({str(bundle_dir)!r}); m = open_runtime(pre, 'litert');"
        "m.predict(np.zeros((3, 2), np.float32), np.zeros((3, 50), np.int32));"
        "import pipeline.launcher, transforms.inference;"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras')], 'TensorFlow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})


def _as_format_1(bundle_dir, destination):
    """The bundle as the previous version wrote it: no LiteRT file or parity probe, format 1's model_version."""
    from model.bundle import _format_1_version, load_bundle

    bundle = load_bundle(str(bundle_dir))
    destination.mkdir()
    for name in ("model.keras", "vocabulary.txt", "tokenizer.json", "scaler.json"):
        shutil.copy(bundle_dir / name, destination / name)
    meta = {k: v for k, v in bundle.metadata.items() if k not in ("weights_sha256", "files_sha256", "litert")}
    meta["format_version"] = 1
    meta["model_version"] = _format_1_version(bundle.model, bundle.vocabulary, bundle.tokenizer, bundle.scaler)
    (destination / "metadata.json").write_text(json.dumps(meta))
    return bundle, meta["model_version"]


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_format_1_bundle_upgrades_to_a_new_version_with_the_same_scores(bundle_dir, tmp_path):
    from model.bundle import load_bundle

    original, old_version = _as_format_1(bundle_dir, tmp_path / "v1")
    with pytest.raises(BundleError, match=r"sentiment-score upgrade-bundle --model-dir .*v1 --output NEW_DIR"):
        check_bundle(str(tmp_path / "v1"))
    done = _cli("upgrade-bundle", "--model-dir", str(tmp_path / "v1"), "--output", str(tmp_path / "v2"))
    assert done.returncode == 0, done.stderr[-2000:]
    upgraded = load_bundle(str(tmp_path / "v2"))
    assert upgraded.metadata["upgraded_from"]["model_version"] == old_version in done.stdout
    assert upgraded.model_version in done.stdout and upgraded.model_version != old_version
    numeric = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    tokens = np.random.default_rng(2).integers(0, upgraded.vocab_size, size=(64, 50)).astype(np.int32)
    np.testing.assert_array_equal(
        upgraded.model.predict([numeric, tokens], verbose=0), original.model.predict([numeric, tokens], verbose=0)
    )
    assert open_runtime(check_bundle(str(tmp_path / "v2")), "litert").predict(numeric, tokens).shape == (64,)


@pytest.mark.slow
def test_a_format_1_bundle_changed_after_training_is_not_upgraded(bundle_dir, tmp_path):
    _as_format_1(bundle_dir, tmp_path / "v1")
    (tmp_path / "v1" / "vocabulary.txt").write_text("changed\n" + (tmp_path / "v1" / "vocabulary.txt").read_text())
    done = _cli("upgrade-bundle", "--model-dir", str(tmp_path / "v1"), "--output", str(tmp_path / "v2"))
    assert done.returncode == 1
    assert "does not match the bundle's content" in done.stderr and not (tmp_path / "v2").exists()


def test_auto_scores_small_runs_on_litert_and_large_ones_on_tensorflow():
    assert choose_runtime(AUTO, 1000) == "litert"
    assert choose_runtime(AUTO, AUTO_TENSORFLOW_ROWS - 1) == "litert"
    assert choose_runtime(AUTO, AUTO_TENSORFLOW_ROWS) == "tensorflow"
    assert choose_runtime("litert", 10 * AUTO_TENSORFLOW_ROWS) == "litert"  # a set runtime is kept at any size
    assert choose_runtime("tensorflow", 1) == "tensorflow"


def test_auto_stays_on_litert_where_tensorflow_is_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert choose_runtime(AUTO, 10 * AUTO_TENSORFLOW_ROWS) == "litert"


def test_auto_stays_on_litert_when_local_worker_processes_share_the_cores():
    # multi_processing on one machine: litert is faster and smaller there (benchmarks/README.md), even for big runs.
    assert choose_runtime(AUTO, 10 * AUTO_TENSORFLOW_ROWS, local_processes=True) == "litert"
    assert choose_runtime(AUTO, 10 * AUTO_TENSORFLOW_ROWS, local_processes=False) == "tensorflow"
    assert choose_runtime("tensorflow", 10 * AUTO_TENSORFLOW_ROWS, local_processes=True) == "tensorflow"


@pytest.mark.slow
def test_scoring_limits_tensorflow_to_one_thread_per_call_only_before_tensorflow_starts():
    def run(script):
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
        head = "import tensorflow as tf; from model.runtime import limit_tensorflow_threads as limit; "
        out = subprocess.run([sys.executable, "-c", head + script], capture_output=True, text=True, env=env, check=True)
        return out.stdout.split()

    assert run("print(limit(), tf.config.threading.get_intra_op_parallelism_threads())") == ["True", "1"]
    # A process that already ran TensorFlow (say, training) keeps its threads: the limit is refused, not an error.
    assert run("tf.constant(1.0) + 1; print(limit(), tf.config.threading.get_intra_op_parallelism_threads())") == [
        "False",
        "0",
    ]
