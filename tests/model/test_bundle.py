"""Saving and loading the model bundle, and each way a bundle can be refused."""

import json
import shutil

import keras
import numpy as np
import pytest

from model.architecture import ModelSpec, build_model
from model.bundle import (
    MODEL_FILE,
    SCALER_FILE,
    TOKENIZER_FILE,
    VOCABULARY_FILE,
    BundleError,
    load_bundle,
    save_bundle,
)

VOCAB = ["good", "bad", "great", "awful"]
TOKENIZER = {
    "sequence_length": 50,
    "standardize": "lower_strip_punctuation",
    "split": "whitespace",
    "truncation": "post",
    "padding": "post",
    "pad_id": 0,
    "oov_id": 1,
}
SCALER = {"feature_names": ["age", "purchase_history"], "mean": [40.0, 100.0], "std": [10.0, 50.0]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model(ModelSpec(vocab_size=100))
    path = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(str(path), model, VOCAB, TOKENIZER, SCALER, {"val_auc": 0.5})
    return path, model


def _copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved[0], target)
    return target


def _inputs(n=7):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 6, size=(n, 50)).astype(np.int32)]


def test_saved_and_loaded_bundle_predicts_identically(saved):
    path, model = saved
    loaded = load_bundle(str(path))
    np.testing.assert_array_equal(loaded.model.predict(_inputs(), verbose=0), model.predict(_inputs(), verbose=0))
    assert loaded.vocabulary == tuple(VOCAB)
    assert loaded.vocab_size == 6 and loaded.sequence_length == 50
    assert loaded.feature_names == ("age", "purchase_history")
    assert loaded.metadata["metrics"] == {"val_auc": 0.5}
    assert loaded.model_version.startswith("sha256-")


@pytest.mark.slow
def test_model_version_depends_on_content_not_on_save_time(saved, tmp_path):
    path, model = saved
    again = save_bundle(str(tmp_path / "again"), model, VOCAB, TOKENIZER, SCALER)
    assert again.model_version == load_bundle(str(path)).model_version
    other = save_bundle(str(tmp_path / "other"), model, VOCAB + ["meh"], TOKENIZER, SCALER)
    assert other.model_version != again.model_version


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(BundleError, match=r"no such directory"):
        load_bundle(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", [MODEL_FILE, VOCABULARY_FILE, TOKENIZER_FILE, SCALER_FILE, "metadata.json"])
def test_each_missing_file_is_named(saved, tmp_path, name):
    copy = _copy(saved, tmp_path)
    (copy / name).unlink()
    with pytest.raises(BundleError, match=rf"missing file {name}"):
        load_bundle(str(copy))


def test_corrupt_model_file_is_named(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    (copy / MODEL_FILE).write_bytes(b"this is not a keras archive")
    with pytest.raises(BundleError, match=r"cannot load model\.keras safely"):
        load_bundle(str(copy))


def test_corrupt_json_is_named(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    (copy / SCALER_FILE).write_text("{not json")
    with pytest.raises(BundleError, match=r"cannot read scaler\.json"):
        load_bundle(str(copy))


def _save_model_in_copy(saved, tmp_path, model):
    copy = _copy(saved, tmp_path)
    model.save(str(copy / MODEL_FILE))
    return copy


def test_wrong_input_name_is_named(saved, tmp_path):
    numeric = keras.Input(shape=(2,), dtype="float32", name="features")
    text = keras.Input(shape=(50,), dtype="int32", name="text_input")
    x = keras.layers.Concatenate()([numeric, keras.layers.Flatten()(keras.layers.Embedding(100, 2)(text))])
    model = keras.Model([numeric, text], keras.layers.Dense(1, activation="sigmoid")(x))
    with pytest.raises(BundleError, match=r"input 0 is named 'features', expected 'numeric_input'"):
        load_bundle(str(_save_model_in_copy(saved, tmp_path, model)))


def test_wrong_sequence_length_in_model_is_named(saved, tmp_path):
    model = build_model(ModelSpec(sequence_length=40, vocab_size=100))
    with pytest.raises(BundleError, match=r"input 'text_input' has shape \(None, 40\), expected \(None, 50\)"):
        load_bundle(str(_save_model_in_copy(saved, tmp_path, model)))


def test_wrong_input_dtype_is_named(saved, tmp_path):
    numeric = keras.Input(shape=(2,), dtype="float32", name="numeric_input")
    text = keras.Input(shape=(50,), dtype="float32", name="text_input")
    x = keras.layers.Concatenate()([numeric, text])
    model = keras.Model([numeric, text], keras.layers.Dense(1, activation="sigmoid")(x))
    with pytest.raises(BundleError, match=r"input 'text_input' has dtype float32, expected int32"):
        load_bundle(str(_save_model_in_copy(saved, tmp_path, model)))


def test_vocabulary_larger_than_embedding_is_refused(saved, tmp_path):
    model = build_model(ModelSpec(vocab_size=5))
    with pytest.raises(BundleError, match=r"vocabulary of 6 ids is larger than the embedding's 5"):
        load_bundle(str(_save_model_in_copy(saved, tmp_path, model)))


def test_sequence_length_mismatch_between_files_is_refused(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    spec = json.loads((copy / TOKENIZER_FILE).read_text())
    spec["sequence_length"] = 64
    (copy / TOKENIZER_FILE).write_text(json.dumps(spec))
    with pytest.raises(BundleError, match=r"sequence_length 64 in tokenizer\.json does not match 50"):
        load_bundle(str(copy))


def test_edited_vocabulary_no_longer_matches_model_version(saved, tmp_path):
    copy = _copy(saved, tmp_path)
    (copy / VOCABULARY_FILE).write_text("good\nbad\ngreat\nterrible\n")
    with pytest.raises(BundleError, match=r"does not match the bundle's content"):
        load_bundle(str(copy))


def test_lambda_layer_is_refused_by_safe_mode(saved, tmp_path):
    numeric = keras.Input(shape=(2,), dtype="float32", name="numeric_input")
    text = keras.Input(shape=(50,), dtype="int32", name="text_input")
    t = keras.layers.Flatten()(keras.layers.Embedding(100, 2)(text))
    x = keras.layers.Lambda(lambda v: v * 2.0)(keras.layers.Concatenate()([numeric, t]))
    model = keras.Model([numeric, text], keras.layers.Dense(1, activation="sigmoid")(x))
    with pytest.raises(BundleError, match=r"cannot load model\.keras safely.*(Lambda|unsafe|safe_mode)"):
        load_bundle(str(_save_model_in_copy(saved, tmp_path, model)))
