"""The model runtimes: LiteRT and XLA scores against Keras, the bundle checked without TensorFlow, each refusal."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model.bundle import LITERT_FILE, PARITY_FILE, BundleError, ModelBundle, check_bundle, read_bundle
from model.runtime import (
    AUTO,
    PARITY_TOLERANCE,
    RUNTIMES,
    TENSORFLOW_FROM_ROWS_XEON,
    choose_runtime,
    cpu_vendor,
    max_difference,
    measured_tensorflow_from_rows,
    parity_inputs,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def open_runtime(bundle: ModelBundle, runtime: str, batch_size: int = 4096, threads: int = 1):
    """The bundle's model on the named runtime (litert's batch size is the bundle's own)."""
    if runtime == "tensorflow":
        return bundle.tensorflow(batch_size, jit_compile=True, threads=threads)
    return bundle.litert(threads)


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
        read_bundle(str(copy)).litert()  # unchecked: check_bundle would refuse the digest


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
        "import sys; from model.bundle import check_bundle; import numpy as np;"
        f"m = check_bundle({str(bundle_dir)!r}).litert();"
        "m.predict(np.zeros((3, 2), np.float32), np.zeros((3, 50), np.int32));"
        "import pipeline.run.launcher, transforms.inference;"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras')], 'TensorFlow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})


BIG = 10_000_000


def test_auto_scores_on_litert_at_every_size_unless_a_switch_is_set():
    # Without a switch (the operator's, or the one measured for the CPU vendor that a local run passes) litert.
    assert choose_runtime(AUTO, 1000) == "litert"
    assert choose_runtime(AUTO, BIG) == "litert"
    # The twin: with the operator's switch, the same sizes split at it.
    assert choose_runtime(AUTO, 999_999, tensorflow_from_rows=1_000_000) == "litert"
    assert choose_runtime(AUTO, 1_000_000, tensorflow_from_rows=1_000_000) == "tensorflow"
    assert choose_runtime("litert", BIG, tensorflow_from_rows=1) == "litert"  # a set runtime is kept at any size
    assert choose_runtime("tensorflow", 1) == "tensorflow"


def test_the_measured_switch_is_per_cpu_vendor_and_never_for_one_without_a_crossing_curve(tmp_path):
    assert measured_tensorflow_from_rows("GenuineIntel") == TENSORFLOW_FROM_ROWS_XEON
    assert measured_tensorflow_from_rows("AuthenticAMD") is None  # litert was faster at every size there
    assert measured_tensorflow_from_rows("") is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert cpu_vendor(str(cpuinfo)) == "GenuineIntel"
    assert cpu_vendor(str(tmp_path / "absent")) == ""  # a system without /proc/cpuinfo: no vendor, no switch


def test_auto_stays_on_litert_where_tensorflow_is_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert choose_runtime(AUTO, BIG, tensorflow_from_rows=1) == "litert"


def test_auto_stays_on_litert_when_local_worker_processes_share_the_cores():
    # multi_processing on one machine: litert is faster and smaller there (benchmarks/README.md), even for big runs.
    assert choose_runtime(AUTO, BIG, local_processes=True, tensorflow_from_rows=1) == "litert"
    assert choose_runtime(AUTO, BIG, local_processes=False, tensorflow_from_rows=1) == "tensorflow"
    assert choose_runtime("tensorflow", BIG, local_processes=True) == "tensorflow"


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


def test_a_bundle_opens_each_runtime_once_and_loads_keras_only_for_tensorflow(bundle_dir):
    bundle = check_bundle(str(bundle_dir))
    assert bundle.model is None  # checked without TensorFlow
    assert bundle.litert(2) is bundle.litert(2) and bundle.litert(1) is not bundle.litert(2)
    assert bundle.model is None
    assert bundle.tensorflow(64, False) is bundle.tensorflow(64, False)
    assert bundle.model is not None and bundle.tensorflow(64, False).version() == bundle.model_version


def test_a_checked_bundle_whose_keras_weights_changed_is_refused_when_tensorflow_loads_them(bundle_dir, tmp_path):
    import keras

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    bundle = check_bundle(str(copy))  # checked before the model file changes under it
    model = keras.saving.load_model(copy / "model.keras", compile=False)
    model.set_weights([w * 0 for w in model.get_weights()])
    model.save(copy / "model.keras")
    with pytest.raises(BundleError, match=r"the weights of model\.keras do not match the bundle's content"):
        bundle.tensorflow(64, False)
