"""The model bundle: one directory holding the Keras model and every artifact scoring needs."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import threading
from datetime import UTC, datetime

import numpy as np

from model.architecture import NUMERIC_INPUT, TEXT_INPUT
from model.litert_conversion import LITERT_BATCH_SIZE, convert_to_litert
from model.runtime import PARITY_TOLERANCE

# Format 2 adds the LiteRT conversion (model.tflite) and the parity probe (parity.npz) to format 1's files.
FORMAT_VERSION = 2
MODEL_FILE = "model.keras"
LITERT_FILE = "model.tflite"
PARITY_FILE = "parity.npz"
VOCABULARY_FILE = "vocabulary.txt"
TOKENIZER_FILE = "tokenizer.json"
SCALER_FILE = "scaler.json"
METADATA_FILE = "metadata.json"
BUNDLE_FILES = (MODEL_FILE, LITERT_FILE, PARITY_FILE, VOCABULARY_FILE, TOKENIZER_FILE, SCALER_FILE, METADATA_FILE)
# Files whose sha256 metadata.json records, so a launcher without TensorFlow can tell that none was changed.
DIGESTED_FILES = (MODEL_FILE, LITERT_FILE, PARITY_FILE)

# Ids below this are reserved: 0 pads a short sequence, 1 stands for a word not in the vocabulary.
PAD_ID = 0
OOV_ID = 1
RESERVED_IDS = 2


class BundleError(ValueError):
    """The model bundle is missing, corrupt or does not fit the scoring code; the message names what."""


class ModelBundle:
    """A model bundle read from its directory: its preprocessing artifacts and metadata, the Keras model once some
    caller needs it (loaded and validated then: checking a bundle needs no TensorFlow), and the model on each
    runtime it was opened on, opened once per process and shared by its threads."""

    def __init__(
        self, path: str, vocabulary, tokenizer: dict, scaler: dict, metadata: dict, local_dir: str, model=None
    ):
        self.path = path
        self.vocabulary = tuple(vocabulary)
        self.tokenizer = tokenizer
        self.scaler = scaler
        self.metadata = metadata
        self.local_dir = local_dir
        self.model = model
        self._runtimes: dict = {}
        self._lock = threading.Lock()  # Featurize and RunInference threads share one bundle per process

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

    def litert(self, threads: int = 1):
        """The model on LiteRT (model.runtime.LiteRTRuntime), without TensorFlow; its batch size is the one the
        bundle was converted with."""
        return self._runtime(("litert", threads), lambda: _open_litert(self, threads))

    def tensorflow(self, batch_size: int = 4096, jit_compile: bool = True, threads: int = 1):
        """The Keras model called through TensorFlow (model.runtime.TensorflowRuntime). Loads (and fully validates)
        the Keras model first if it was not loaded, with TensorFlow limited to one thread per call for scoring."""

        def open_tensorflow():
            if self.model is None:
                from model.runtime import limit_tensorflow_threads

                limit_tensorflow_threads()
                self.model = _load_keras(self.local_dir)
                validate_bundle(self)
                _check_content(self.path, self.local_dir, self)
            return _open_tensorflow(self, batch_size, jit_compile, threads)

        return self._runtime(("tensorflow", batch_size, jit_compile, threads), open_tensorflow)

    def _runtime(self, key: tuple, open_runtime):
        with self._lock:
            if key not in self._runtimes:
                self._runtimes[key] = open_runtime()
            return self._runtimes[key]


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def weights_digest(model) -> str:
    """sha256 of the Keras model's weights (dtypes, shapes and values), independent of how the file was zipped."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_version(weights: str, litert: str, vocabulary, tokenizer: dict, scaler: dict) -> str:
    """A version string derived from the weights, the LiteRT conversion and the preprocessing artifacts, so equal
    bundles share it and a change to any of them changes it."""
    digest = hashlib.sha256()
    digest.update(weights.encode() + litert.encode())
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
    from model.runtime import LiteRTRuntime, max_difference, parity_inputs

    vocabulary = tuple(vocabulary)
    os.makedirs(directory, exist_ok=True)
    features, sequence_length = len(scaler["feature_names"]), int(tokenizer["sequence_length"])
    litert = convert_to_litert(model, features, sequence_length)
    numeric, tokens = parity_inputs(features, sequence_length, len(vocabulary) + RESERVED_IDS)
    reference = np.asarray(model([numeric, tokens], training=False), dtype=np.float32).reshape(-1)
    difference = max_difference(LiteRTRuntime(litert).predict(numeric, tokens), reference)
    if not difference <= PARITY_TOLERANCE:
        raise BundleError(f"model bundle {directory}: the LiteRT conversion differs from Keras by {difference}")
    model.save(os.path.join(directory, MODEL_FILE))
    with open(os.path.join(directory, LITERT_FILE), "wb") as f:
        f.write(litert)
    with open(os.path.join(directory, PARITY_FILE), "wb") as f:
        np.savez(f, numeric=numeric, tokens=tokens, scores=reference)
    with open(os.path.join(directory, VOCABULARY_FILE), "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + ("\n" if vocabulary else ""))
    for name, payload in ((TOKENIZER_FILE, tokenizer), (SCALER_FILE, scaler)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
    weights = weights_digest(model)
    digests = {name: file_digest(os.path.join(directory, name)) for name in DIGESTED_FILES}
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_version": content_version(weights, digests[LITERT_FILE], vocabulary, tokenizer, scaler),
        "feature_names": list(scaler["feature_names"]),
        "sequence_length": sequence_length,
        "vocab_size": len(vocabulary) + RESERVED_IDS,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics or {},
        "weights_sha256": weights,
        "files_sha256": digests,
        "litert": {"batch_size": LITERT_BATCH_SIZE, "parity_max_abs_diff": difference},
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
    if os.path.isfile(os.path.join(directory, METADATA_FILE)):  # an older format lacks files: say which format
        _check_format(directory, _read_json(directory, METADATA_FILE))
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
    d, model, tok = bundle.path, bundle.model, bundle.tokenizer
    _validate_preprocessing(d, bundle)
    _check_input(d, model, 0, NUMERIC_INPUT, len(bundle.scaler["feature_names"]), "float32")
    _check_input(d, model, 1, TEXT_INPUT, tok["sequence_length"], "int32")
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
    if weights_digest(model) != bundle.metadata["weights_sha256"]:
        raise BundleError(
            f"model bundle {d}: the weights of {MODEL_FILE} do not match the bundle's content "
            f"({bundle.metadata['model_version']}); a file was changed after training"
        )


def _check_format(d: str, meta: dict) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"model bundle {d}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION} "
            f"(format 2 adds {LITERT_FILE}); train it again with `sentiment-score train`"
        )


def _validate_preprocessing(d: str, pre: ModelBundle) -> None:
    """The checks that need no model: metadata, tokenizer, scaler and vocabulary agree with each other."""
    tok, scaler, meta = pre.tokenizer, pre.scaler, pre.metadata
    _check_format(d, meta)
    for key in ("model_version", "feature_names", "sequence_length", "vocab_size", "weights_sha256", "files_sha256"):
        if key not in meta:
            raise BundleError(f"model bundle {d}: {METADATA_FILE} lacks {key!r}")
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
    vocab_size = len(pre.vocabulary) + RESERVED_IDS
    if meta["vocab_size"] != vocab_size:
        raise BundleError(
            f"model bundle {d}: {VOCABULARY_FILE} has {vocab_size} ids, {METADATA_FILE} says {meta['vocab_size']}"
        )
    if len(set(pre.vocabulary)) != len(pre.vocabulary) or "" in pre.vocabulary:
        raise BundleError(f"model bundle {d}: {VOCABULARY_FILE} has an empty or repeated word")


def _check_content(d: str, directory: str, pre: ModelBundle) -> None:
    """The files are the ones written with the bundle (their sha256 in metadata.json) and model_version is theirs."""
    meta = pre.metadata
    for name in DIGESTED_FILES:
        if file_digest(os.path.join(directory, name)) != meta["files_sha256"].get(name):
            raise BundleError(
                f"model bundle {d}: {name} does not match the bundle's content ({meta['model_version']}); "
                f"a file was changed after training"
            )
    litert = meta["files_sha256"][LITERT_FILE]
    version = content_version(meta["weights_sha256"], litert, pre.vocabulary, pre.tokenizer, pre.scaler)
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
    """Loads and validates a bundle with its Keras model (imports TensorFlow) from a local or remote directory."""
    directory = localize(path)
    _check_files(directory)
    bundle = _read_bundle(path, directory)
    _validate_preprocessing(path, bundle)
    bundle.model = _load_keras(directory)
    validate_bundle(bundle)
    _check_content(path, directory, bundle)
    return bundle


def read_bundle(path: str) -> ModelBundle:
    """Reads a bundle's artifacts and metadata without checking them (benchmarks, tests of the runtime's own
    checks); check_bundle checks them."""
    directory = localize(path)
    _check_files(directory)
    return _read_bundle(path, directory)


def check_bundle(path: str) -> ModelBundle:
    """Validates a bundle without loading its model (no TensorFlow): every file is there, the artifacts agree, and
    the model files and model_version are the ones the bundle was written with. What the launcher and each worker
    run."""
    directory = localize(path)
    _check_files(directory)
    bundle = _read_bundle(path, directory)
    _validate_preprocessing(path, bundle)
    _check_content(path, directory, bundle)
    return bundle


def _read_bundle(path: str, directory: str) -> ModelBundle:
    metadata = _read_json(directory, METADATA_FILE)
    tokenizer = _read_json(directory, TOKENIZER_FILE)
    scaler = _read_json(directory, SCALER_FILE)
    try:
        with open(os.path.join(directory, VOCABULARY_FILE), encoding="utf-8") as f:
            vocabulary = tuple(line.rstrip("\n") for line in f)
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"model bundle {directory}: cannot read {VOCABULARY_FILE}: {e}") from None
    return ModelBundle(path, vocabulary, tokenizer, scaler, metadata, directory)


def _open_litert(bundle: ModelBundle, threads: int):
    from model.runtime import LiteRTRuntime

    d, meta = bundle.local_dir, bundle.metadata
    with open(os.path.join(d, LITERT_FILE), "rb") as f:
        model = LiteRTRuntime(f.read(), threads, bundle.model_version)
    expected = [(model.batch_size, len(meta["feature_names"])), (model.batch_size, meta["sequence_length"])]
    got = sorted((tuple(int(x) for x in i["shape"]) for i in model.input_details), key=lambda s: s[1])
    if got != sorted(expected, key=lambda s: s[1]):
        raise BundleError(f"model bundle {d}: {LITERT_FILE} has inputs {got}, expected {expected}")
    return _parity_checked(bundle, model)


def _open_tensorflow(bundle: ModelBundle, batch_size: int, jit_compile: bool, threads: int):
    from model.runtime import TensorflowRuntime

    runtime = TensorflowRuntime(bundle.model, batch_size, jit_compile, threads, bundle.model_version)
    return _parity_checked(bundle, runtime)


def _parity_checked(bundle: ModelBundle, model):
    """The runtime, checked against the Keras scores saved with the bundle (parity.npz): a runtime whose scores
    differ by more than PARITY_TOLERANCE is refused."""
    from model.runtime import max_difference

    d = bundle.local_dir
    with np.load(os.path.join(d, PARITY_FILE)) as probe:
        numeric, tokens, reference = probe["numeric"], probe["tokens"], probe["scores"]
    difference = max_difference(model.predict(numeric, tokens), reference)
    if not difference <= PARITY_TOLERANCE:
        raise BundleError(
            f"model bundle {d}: the {model.name} runtime's scores differ from the Keras model's by {difference} "
            f"(more than {PARITY_TOLERANCE}) on the bundle's parity probe"
        )
    return model
