"""Model runtimes behind one small interface: TensorFlow (XLA-compiled Keras call) and LiteRT (XNNPACK)."""

from __future__ import annotations

import importlib.util
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.native_output import quiet_native_stderr

LITERT = "litert"
TENSORFLOW = "tensorflow"
AUTO = "auto"
RUNTIMES = (LITERT, TENSORFLOW)


def choose_runtime(
    setting: str, rows: int, local_processes: bool = False, tensorflow_from_rows: int | None = None
) -> str:
    """The runtime a pipeline of `rows` review rows scores on: the setting, or for `auto` litert, unless the
    config's tensorflow_from_rows is set and the run is at least that large (and TensorFlow is installed, and no
    local worker processes share the cores).

    Which runtime is faster depends on the CPU, so the switch follows the host's curve (benchmarks/README.md, "The
    runtime curve"): the operator's setting, or for a local run without one measured_tensorflow_from_rows (the
    pipeline graph asks). On the AMD EPYC litert was faster at every size from 250k to 5M review rows (1M: 11.98 vs
    15.88 s; 5M: 40.0 vs 45.9 s): never. On the Intel Xeon XLA wins from TENSORFLOW_FROM_ROWS_XEON rows (see
    there). With several local worker processes (DirectRunner multi_processing)
    `auto` stays on litert everywhere measured: at 1M, 61.6k rows/s in 1.38 GB against 57-60k in 1.88-1.94 GB."""
    if setting != AUTO:
        return setting
    if (
        tensorflow_from_rows is not None
        and rows >= tensorflow_from_rows
        and not local_processes
        and importlib.util.find_spec("tensorflow") is not None
    ):
        return TENSORFLOW
    return LITERT


# Where `runtime: auto` switches to tensorflow on a local run whose config leaves tensorflow_from_rows unset, by the
# CPU's vendor: each host's curve measured in one run (benchmarks/README.md, "The runtime curve"). On the Intel Xeon
# (AVX-512, AMX) XLA needs ~11.5 CPU-µs a row in the pipeline against litert's ~18.5, and its start-up (importing
# TensorFlow, one XLA compilation: ~4.5 s) is paid back from about TENSORFLOW_FROM_ROWS_XEON rows; on the AMD EPYC
# litert was faster at every size (250k-5M), so there it never switches.
TENSORFLOW_FROM_ROWS_XEON = 500_000
TENSORFLOW_FROM_ROWS_BY_CPU_VENDOR = {"GenuineIntel": TENSORFLOW_FROM_ROWS_XEON}


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's CPU vendor id (GenuineIntel, AuthenticAMD), or '' where the system does not say."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def measured_tensorflow_from_rows(vendor: str | None = None) -> int | None:
    """tensorflow_from_rows for a config that leaves it unset, on a machine of this CPU vendor: where its measured
    curve crosses, or None (never) for a vendor with no curve that crosses."""
    return TENSORFLOW_FROM_ROWS_BY_CPU_VENDOR.get(cpu_vendor() if vendor is None else vendor)


# The scores of a runtime may differ from the Keras model's by at most this (checked at save, at load and in tests).
PARITY_TOLERANCE = 1e-5


class ModelRuntime:
    """Scores (numeric, tokens) arrays with fixed-shape calls: every call gets exactly batch_size rows (the last
    batch is padded with zeros and the padding rows' scores dropped), so a compiled program or an allocated
    interpreter is reused for every call. With threads > 1 the calls of one predict() run on that many threads.
    model_version: the version of the bundle the model came from, which every score it makes is written with."""

    name = ""

    def __init__(self, batch_size: int, threads: int = 1, model_version: str = ""):
        self.batch_size = batch_size
        self.threads = threads
        self.model_version = model_version
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"{self.name}-call") if threads > 1 else None

    def _call(self, numeric: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Scores exactly batch_size rows; returns an array of batch_size scores."""
        raise NotImplementedError

    def _padded_call(self, numeric: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        rows, size = len(numeric), self.batch_size
        if rows < size:
            numeric = np.concatenate([numeric, np.zeros((size - rows, numeric.shape[1]), dtype=np.float32)])
            tokens = np.concatenate([tokens, np.zeros((size - rows, tokens.shape[1]), dtype=np.int32)])
        numeric = np.ascontiguousarray(numeric, np.float32)
        tokens = np.ascontiguousarray(tokens, np.int32)
        return np.asarray(self._call(numeric, tokens), dtype=np.float32).reshape(-1)[:rows]

    def predict(self, numeric: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """float32 scores, one per row."""
        n, size = len(numeric), self.batch_size
        starts = range(0, n, size)
        if self._executor is None or len(starts) < 2:
            parts = [self._padded_call(numeric[s : s + size], tokens[s : s + size]) for s in starts]
        else:
            calls = [
                self._executor.submit(self._padded_call, numeric[s : s + size], tokens[s : s + size]) for s in starts
            ]
            parts = [c.result() for c in calls]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    def version(self) -> str:
        """model_version, as a method: RunInference may hand its users a proxy of the runtime (shared across
        processes), which forwards methods only."""
        return self.model_version


def limit_tensorflow_threads() -> bool:
    """One intra-op and one inter-op thread per TensorFlow call, for scoring: the runtime's own call threads and
    Beam's threads give the parallelism, and XLA spreading each call over every core as well only made the threads
    wait on each other. Measured at 2M reviews in-memory, 3 runs each alternated: 36.3-36.9 vs 38.9-39.4 user CPU-s
    (-7 %), wall 26.3-26.5 vs 26.8-27.9 s. Takes effect only before TensorFlow has started (returns False after,
    e.g. in a process that trained a model first); never called by training."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow is already initialized in this process
        return False
    return True


class TensorflowRuntime(ModelRuntime):
    """The Keras model called as a tf.function, XLA-compiled by default (compiled once: the shape never changes)."""

    name = TENSORFLOW

    def __init__(
        self, model, batch_size: int = 4096, jit_compile: bool = True, threads: int = 1, model_version: str = ""
    ):
        import tensorflow as tf

        super().__init__(batch_size, threads, model_version)
        self.model = model

        def call(numeric, tokens):
            return model([numeric, tokens], training=False)

        self._fn = tf.function(call, jit_compile=jit_compile, reduce_retracing=False)

    def _call(self, numeric, tokens):
        return self._fn(numeric, tokens)


class LiteRTRuntime(ModelRuntime):
    """The bundle's LiteRT flatbuffer on ai-edge-litert's interpreter (XNNPACK), without TensorFlow.

    The flatbuffer has a fixed batch dimension (an LSTM converts to builtin ops only with static shapes), so
    batch_size is the bundle's. One interpreter per thread: an interpreter is not thread-safe, and two interpreters
    on two threads are what reaches the model-only limit on 2 cores (invoke releases the GIL).
    """

    name = LITERT

    def __init__(self, content: bytes, threads: int = 1, model_version: str = ""):
        from ai_edge_litert.interpreter import Interpreter

        with quiet_native_stderr():  # LiteRT's C++ prints "Created TensorFlow Lite XNNPACK delegate" per interpreter
            interpreters = [Interpreter(model_content=content, num_threads=1) for _ in range(max(threads, 1))]
            for interpreter in interpreters:
                interpreter.allocate_tensors()
        first = interpreters[0]
        inputs = {d["name"]: d for d in first.get_input_details()}
        self.input_details = list(inputs.values())
        self.output_details = first.get_output_details()
        batch = int(self.input_details[0]["shape"][0])
        super().__init__(batch, threads, model_version)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for interpreter in interpreters:
            self._free.put(_Invoker(interpreter))

    def _call(self, numeric, tokens):
        invoker = self._free.get()
        try:
            return invoker(numeric, tokens)
        finally:
            self._free.put(invoker)


class _Invoker:
    """One interpreter: sets the numeric and text inputs by name, invokes, copies the output out."""

    def __init__(self, interpreter):
        self._interpreter = interpreter
        details = interpreter.get_input_details()
        self._numeric = next(d["index"] for d in details if "numeric" in d["name"])
        self._text = next(d["index"] for d in details if "text" in d["name"])
        self._output = interpreter.get_output_details()[0]["index"]

    def __call__(self, numeric, tokens):
        self._interpreter.set_tensor(self._numeric, numeric)
        self._interpreter.set_tensor(self._text, tokens)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def max_difference(scores: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference, NaN where exactly one side is NaN (a NaN in both counts as equal)."""
    scores, reference = np.asarray(scores, np.float64).reshape(-1), np.asarray(reference, np.float64).reshape(-1)
    both_nan = np.isnan(scores) & np.isnan(reference)
    diff = np.abs(np.where(both_nan, 0.0, scores) - np.where(both_nan, 0.0, reference))
    return float(np.max(diff, initial=0.0)) if not np.isnan(diff).any() else float("nan")


def parity_inputs(features: int, sequence_length: int, vocab_size: int, rows: int = 64, seed: int = 0):
    """Deterministic probe inputs for parity checks: standard-normal features, token ids over the vocabulary."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, features)).astype(np.float32)
    tokens = rng.integers(0, vocab_size, size=(rows, sequence_length)).astype(np.int32)
    tokens[:, sequence_length // 2 :][rng.random(rows) < 0.5] = 0  # short texts: padded like the tokenizer pads
    return numeric, tokens
