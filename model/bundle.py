"""The model bundle: one directory holding the Keras model and every artifact scoring needs."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from model.architecture import NUMERIC_INPUT, TEXT_INPUT

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.txt"
TOKENIZER_FILE = "tokenizer.json"
SCALER_FILE = "scaler.json"
METADATA_FILE = "metadata.json"
BUNDLE_FILES = (MODEL_FILE, VOCABULARY_FILE, TOKENIZER_FILE, SCALER_FILE, METADATA_FILE)

# Ids below this are reserved: 0 pads a short sequence, 1 stands for a word not in the vocabulary.
PAD_ID = 0
OOV_ID = 1
RESERVED_IDS = 2


class BundleError(ValueError):
    """The model bundle is missing, corrupt or does not fit the scoring code; the message names what."""


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, validated model bundle."""

    path: str
    model: object
    vocabulary: tuple[str, ...]
    tokenizer: dict
    scaler: dict
    metadata: dict = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return self.metadata["model_version"]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.scaler["feature_names"])

    @property
    def sequence_length(self) -> int:
        return int(self.tokenizer["sequence_length"])

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + RESERVED_IDS


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_version(model, vocabulary, tokenizer: dict, scaler: dict) -> str:
    """A version string derived from the weights and preprocessing artifacts, so equal bundles share it."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    digest.update("\n".join(vocabulary).encode("utf-8"))
    digest.update(_canonical_json(tokenizer))
    digest.update(_canonical_json(scaler))
    return "sha256-" + digest.hexdigest()[:16]


def save_bundle(
    directory: str,
    model,
    vocabulary,
    tokenizer: dict,
    scaler: dict,
    metrics: dict | None = None,
    extra_metadata: dict | None = None,
) -> ModelBundle:
    """Writes a bundle directory (replacing one that is there) and returns it loaded."""
    vocabulary = tuple(vocabulary)
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, MODEL_FILE))
    with open(os.path.join(directory, VOCABULARY_FILE), "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + ("\n" if vocabulary else ""))
    for name, payload in ((TOKENIZER_FILE, tokenizer), (SCALER_FILE, scaler)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_version": content_version(model, vocabulary, tokenizer, scaler),
        "feature_names": list(scaler["feature_names"]),
        "sequence_length": int(tokenizer["sequence_length"]),
        "vocab_size": len(vocabulary) + RESERVED_IDS,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics or {},
        **(extra_metadata or {}),
    }
    with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    return load_bundle(directory)


def localize(path: str) -> str:
    """Returns a local directory holding the bundle, copying it from a remote filesystem if needed."""
    if "://" not in path:
        return path
    from apache_beam.io.filesystems import FileSystems

    local = tempfile.mkdtemp(prefix="model-bundle-")
    atexit.register(shutil.rmtree, local, True)
    for name in BUNDLE_FILES:
        source = FileSystems.join(path, name)
        if not FileSystems.exists(source):
            raise BundleError(f"model bundle {path}: missing file {name}")
        with FileSystems.open(source) as src, open(os.path.join(local, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def _read_json(directory: str, name: str) -> dict:
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"model bundle {directory}: cannot read {name}: {e}") from None
    if not isinstance(data, dict):
        raise BundleError(f"model bundle {directory}: {name} must hold a JSON object")
    return data


def _check_files(directory: str) -> None:
    if not os.path.isdir(directory):
        raise BundleError(f"model bundle {directory}: no such directory")
    for name in BUNDLE_FILES:
        if not os.path.isfile(os.path.join(directory, name)):
            raise BundleError(f"model bundle {directory}: missing file {name}")


def _load_keras(directory: str):
    import keras

    path = os.path.join(directory, MODEL_FILE)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for corrupt or unsafe files.
        reason = " ".join(str(e).split())[:300]
        raise BundleError(f"model bundle {directory}: cannot load {MODEL_FILE} safely: {reason}") from None


def _check_input(directory: str, model, index: int, name: str, width: int, dtype: str) -> None:
    inputs = model.inputs
    if len(inputs) != 2:
        raise BundleError(f"model bundle {directory}: {MODEL_FILE} has {len(inputs)} inputs, expected 2")
    tensor = inputs[index]
    got_name = tensor.name.split(":")[0]
    got_shape = tuple(tensor.shape)
    got_dtype = str(tensor.dtype).replace("<dtype: '", "").replace("'>", "")
    if got_name != name:
        raise BundleError(f"model bundle {directory}: input {index} is named {got_name!r}, expected {name!r}")
    if got_shape != (None, width):
        raise BundleError(f"model bundle {directory}: input {name!r} has shape {got_shape}, expected (None, {width})")
    if got_dtype != dtype:
        raise BundleError(f"model bundle {directory}: input {name!r} has dtype {got_dtype}, expected {dtype}")


def validate_bundle(bundle: ModelBundle) -> None:
    """Checks that the artifacts agree with each other and with the model; raises BundleError naming what."""
    d, model, tok, scaler, meta = bundle.path, bundle.model, bundle.tokenizer, bundle.scaler, bundle.metadata
    for key in ("model_version", "feature_names", "sequence_length", "vocab_size"):
        if key not in meta:
            raise BundleError(f"model bundle {d}: {METADATA_FILE} lacks {key!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"model bundle {d}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    for key in ("feature_names", "mean", "std"):
        if key not in scaler:
            raise BundleError(f"model bundle {d}: {SCALER_FILE} lacks {key!r}")
    n = len(scaler["feature_names"])
    if n == 0 or len(scaler["mean"]) != n or len(scaler["std"]) != n:
        raise BundleError(f"model bundle {d}: {SCALER_FILE} needs one mean and std per feature")
    if not np.all(np.isfinite(scaler["mean"])) or not np.all(np.isfinite(scaler["std"])):
        raise BundleError(f"model bundle {d}: {SCALER_FILE} holds a non-finite statistic")
    if list(meta["feature_names"]) != list(scaler["feature_names"]):
        raise BundleError(f"model bundle {d}: feature_names differ between {METADATA_FILE} and {SCALER_FILE}")
    seq_len = tok.get("sequence_length")
    if seq_len != meta["sequence_length"]:
        raise BundleError(
            f"model bundle {d}: sequence_length {seq_len} in {TOKENIZER_FILE} does not match "
            f"{meta['sequence_length']} in {METADATA_FILE}"
        )
    if tok.get("pad_id", PAD_ID) != PAD_ID or tok.get("oov_id", OOV_ID) != OOV_ID:
        raise BundleError(f"model bundle {d}: {TOKENIZER_FILE} must use pad_id 0 and oov_id 1")
    _check_input(d, model, 0, NUMERIC_INPUT, n, "float32")
    _check_input(d, model, 1, TEXT_INPUT, seq_len, "int32")
    out_shape = tuple(model.outputs[0].shape)
    if out_shape != (None, 1):
        raise BundleError(f"model bundle {d}: output has shape {out_shape}, expected (None, 1)")
    embeddings = [layer for layer in model.layers if layer.__class__.__name__ == "Embedding"]
    if not embeddings:
        raise BundleError(f"model bundle {d}: {MODEL_FILE} has no Embedding layer for {TEXT_INPUT!r}")
    input_dim = int(embeddings[0].input_dim)
    if bundle.vocab_size > input_dim:
        raise BundleError(
            f"model bundle {d}: vocabulary of {bundle.vocab_size} ids is larger than the embedding's {input_dim}"
        )
    if meta["vocab_size"] != bundle.vocab_size:
        raise BundleError(
            f"model bundle {d}: {VOCABULARY_FILE} has {bundle.vocab_size} ids, "
            f"{METADATA_FILE} says {meta['vocab_size']}"
        )
    if len(set(bundle.vocabulary)) != len(bundle.vocabulary) or "" in bundle.vocabulary:
        raise BundleError(f"model bundle {d}: {VOCABULARY_FILE} has an empty or repeated word")
    version = content_version(model, bundle.vocabulary, tok, scaler)
    if version != meta["model_version"]:
        raise BundleError(
            f"model bundle {d}: model_version {meta['model_version']} in {METADATA_FILE} does not match "
            f"the bundle's content ({version}); a file was changed after training"
        )


CURRENT_FILE = "CURRENT"


def resolve_model_dir(path: str) -> str:
    """The bundle directory a model_dir names: itself, or, for a models root holding a CURRENT file, the version
    folder CURRENT names. Resolved once at launch, so a CURRENT that moves on during a run changes nothing in it."""
    from apache_beam.io.filesystems import FileSystems

    marker = FileSystems.join(path.rstrip("/"), CURRENT_FILE)
    if not FileSystems.exists(marker):
        return path
    try:
        with FileSystems.open(marker) as f:
            name = f.read().decode("utf-8").strip()
    except Exception as e:
        raise BundleError(f"model root {path}: cannot read {CURRENT_FILE}: {e}") from None
    if not name or "/" in name or name in (".", ".."):
        raise BundleError(f"model root {path}: {CURRENT_FILE} must name one version folder, got {name!r}")
    return FileSystems.join(path.rstrip("/"), name)


def load_bundle(path: str) -> ModelBundle:
    """Loads and validates a bundle from a local or remote (FileSystems) directory."""
    directory = localize(path)
    _check_files(directory)
    pre = _read_preprocessing(directory)
    model = _load_keras(directory)
    bundle = ModelBundle(path, model, pre.vocabulary, pre.tokenizer, pre.scaler, pre.metadata)
    validate_bundle(bundle)
    return bundle


@dataclass(frozen=True)
class Preprocessing:
    """The bundle's featurization artifacts, without the Keras model (cheap to load, no TensorFlow)."""

    vocabulary: tuple[str, ...]
    tokenizer: dict
    scaler: dict
    metadata: dict


def load_preprocessing(path: str) -> Preprocessing:
    """Loads the tokenizer, vocabulary and scaler of a bundle; load_bundle validates them against the model."""
    directory = localize(path)
    _check_files(directory)
    return _read_preprocessing(directory)


def _read_preprocessing(directory: str) -> Preprocessing:
    metadata = _read_json(directory, METADATA_FILE)
    tokenizer = _read_json(directory, TOKENIZER_FILE)
    scaler = _read_json(directory, SCALER_FILE)
    try:
        with open(os.path.join(directory, VOCABULARY_FILE), encoding="utf-8") as f:
            vocabulary = tuple(line.rstrip("\n") for line in f)
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"model bundle {directory}: cannot read {VOCABULARY_FILE}: {e}") from None
    return Preprocessing(vocabulary, tokenizer, scaler, metadata)
