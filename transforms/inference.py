"""Featurizing valid rows with the bundle's tokenizer and scaler, and scoring them with the bundle's model."""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from model.bundle import ModelBundle, load_bundle, load_preprocessing
from transforms.numeric import Scaler
from transforms.schema import DETAIL, MODEL_VERSION, REASON, SCORE, RunSchema, conform
from transforms.text import Tokenizer, TokenizerSpec
from transforms.validate import INFERENCE_ERROR, INVALID_SCORE

_LOG = logging.getLogger(__name__)
NUMERIC = "__numeric"
TOKENS = "__tokens"


class Featurizer:
    """The bundle's tokenizer and scaler applied to a table of valid rows."""

    def __init__(self, vocabulary, tokenizer: dict, scaler: dict):
        self.tokenizer = Tokenizer(vocabulary, TokenizerSpec.from_dict(tokenizer))
        self.scaler = Scaler.from_dict(scaler)

    @classmethod
    def from_bundle(cls, bundle) -> Featurizer:
        return cls(bundle.vocabulary, bundle.tokenizer, bundle.scaler)

    def featurize(self, table: pa.Table, text_column: str):
        """(numeric (n, features) float32, tokens (n, sequence_length) int32, words seen, words out of vocabulary)."""
        numeric = self.scaler.transform(table)
        tokens, words, oov = self.tokenizer.tokenize_and_pad(table[text_column], return_stats=True)
        return numeric, tokens, words, oov


def _matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _matrix(table: pa.Table, name: str, dtype) -> np.ndarray:
    column = table[name].combine_chunks()
    width = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


class ModelScorer:
    """Calls the model on fixed-shape batches: every call gets exactly batch_size rows (the last batch is padded
    with zeros and the padding rows' scores are dropped), so the compiled (XLA) function is traced and compiled
    once and reused for every call."""

    def __init__(self, model, batch_size: int = 4096, jit_compile: bool = True):
        import tensorflow as tf

        self.model = model
        self.batch_size = batch_size

        def call(numeric, tokens):
            return model([numeric, tokens], training=False)

        self._call = tf.function(call, jit_compile=jit_compile, reduce_retracing=False)

    def predict(self, numeric: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """float32 scores, one per row."""
        n, size = len(numeric), self.batch_size
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, size):
            rows = min(size, n - start)
            num, tok = numeric[start : start + rows], tokens[start : start + rows]
            if rows < size:
                num = np.concatenate([num, np.zeros((size - rows, num.shape[1]), dtype=np.float32)])
                tok = np.concatenate([tok, np.zeros((size - rows, tok.shape[1]), dtype=np.int32)])
            result = self._call(np.ascontiguousarray(num, np.float32), np.ascontiguousarray(tok, np.int32))
            out[start : start + rows] = np.asarray(result).reshape(-1)[:rows]
        return out


def score_with_isolation(predict, numeric: np.ndarray, tokens: np.ndarray):
    """Scores rows; when a call fails, halves the batch until the failing rows are found.

    Returns (scores, failed mask, first error message); a failed row's score is NaN.
    """
    n = len(numeric)
    scores = np.full(n, np.nan, dtype=np.float32)
    failed = np.zeros(n, dtype=bool)
    first_error = None
    pending = [(0, n)] if n else []
    while pending:
        start, stop = pending.pop()
        try:
            scores[start:stop] = predict(numeric[start:stop], tokens[start:stop])
        except Exception as e:  # Any model failure isolates rows instead of failing the run.
            if stop - start == 1:
                failed[start] = True
                first_error = first_error or f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            else:
                middle = (start + stop) // 2
                pending.extend([(middle, stop), (start, middle)])
    return scores, failed, first_error


class _Loaded:
    """A weak-referenceable holder for what shared.Shared keeps per worker process."""

    def __init__(self, value):
        self.value = value


class _InOrder:
    """Runs a DoFn's heavy work on background threads and hands the results back in submission order.

    Arrow, numpy and TensorFlow release the GIL, so while `threads` elements are being worked on the fused stages
    upstream already read and validate the next ones. At most `threads` results wait at a time, which bounds
    memory. Results are turned into outputs on the DoFn's own thread (Beam's metrics are thread-local), and the
    ones still pending at the end of a bundle are emitted from finish_bundle as WindowedValues.
    """

    def __init__(self, threads: int, name: str):
        self._threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._pending = collections.deque()

    def start_bundle(self) -> None:
        self._pending.clear()

    def submit(self, work, emit, timestamp, window):
        """Starts work() and yields the outputs of the oldest results beyond the `threads` allowed to wait."""
        self._pending.append((self._executor.submit(work), emit, timestamp, window))
        while len(self._pending) > self._threads:
            future, emit, _, _ = self._pending.popleft()
            yield from emit(future.result())

    def finish_bundle(self):
        while self._pending:
            future, emit, timestamp, window = self._pending.popleft()
            for output in emit(future.result()):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, timestamp, [window]))
                else:
                    yield WindowedValue(output, timestamp, [window])

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Featurize(beam.DoFn):
    """Adds the model's inputs (scaled numeric features and token ids) to each (partition, table) pair, on
    `threads` background threads, keeping the input order.

    Also emits (partition, (words, out-of-vocabulary words)) on the 'vocabulary_stats' output.
    """

    STATS = "vocabulary_stats"

    def __init__(self, model_dir: str, schema: RunSchema, threads: int = 2):
        self._model_dir = model_dir
        self._schema = schema
        self._threads = threads
        self._shared = shared.Shared()

    def setup(self):
        def load():
            pre = load_preprocessing(self._model_dir)
            return _Loaded(Featurizer(pre.vocabulary, pre.tokenizer, pre.scaler))

        self._featurizer = self._shared.acquire(load, tag=f"featurizer:{self._model_dir}").value
        self._in_order = _InOrder(self._threads, "featurize")

    def teardown(self):
        if getattr(self, "_in_order", None) is not None:
            self._in_order.close()

    def start_bundle(self):
        self._in_order.start_bundle()

    def _featurize(self, table: pa.Table):
        numeric, tokens, words, oov = self._featurizer.featurize(table, self._schema.columns.review_text)
        table = table.append_column(NUMERIC, _matrix_column(numeric)).append_column(TOKENS, _matrix_column(tokens))
        return table, words, oov

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        partition, table = element

        def emit(result):
            table, words, oov = result
            yield partition, table
            yield beam.pvalue.TaggedOutput(self.STATS, (partition, (words, oov)))

        yield from self._in_order.submit(lambda: self._featurize(table), emit, timestamp, window)

    def finish_bundle(self):
        yield from self._in_order.finish_bundle()


class ScoreReviews(beam.DoFn):
    """Runs the bundle's model over featurized tables; the model is loaded once per worker process
    (shared.Shared) and shared by its threads. Rows the model fails on, or scores outside [0, 1],
    go to the 'rejects' output with a reason.

    Model calls run on `threads` background threads and outputs keep the input order (see _InOrder).
    """

    REJECTS = "rejects"

    def __init__(
        self, model_dir: str, schema: RunSchema, batch_size: int = 4096, jit_compile: bool = True, threads: int = 2
    ):
        self._model_dir = model_dir
        self._schema = schema
        self._batch_size = batch_size
        self._jit_compile = jit_compile
        self._threads = threads
        self._shared = shared.Shared()
        self._scored = beam.metrics.Metrics.counter("sentiment", "rows_scored")
        self._rejected = beam.metrics.Metrics.counter("sentiment", "rows_rejected_at_inference")

    def setup(self):
        def load():
            bundle: ModelBundle = load_bundle(self._model_dir)
            scorer = ModelScorer(bundle.model, self._batch_size, self._jit_compile)
            return _Loaded((bundle.model_version, scorer))

        tag = f"model:{self._model_dir}:{self._batch_size}:{self._jit_compile}"
        self._model_version, self._scorer = self._shared.acquire(load, tag=tag).value
        self._in_order = _InOrder(self._threads, "score-reviews")
        self._progress_rows, self._progress_start, self._progress_last = 0, time.monotonic(), time.monotonic()

    def teardown(self):
        if getattr(self, "_in_order", None) is not None:
            self._in_order.close()

    def start_bundle(self):
        self._in_order.start_bundle()

    def _log_progress(self, rows: int) -> None:
        self._progress_rows += rows
        now = time.monotonic()
        if now - self._progress_last >= 30:
            rate = self._progress_rows / max(now - self._progress_start, 1e-9)
            _LOG.info("scored %d rows in this worker so far, %.0f rows/s", self._progress_rows, rate)
            self._progress_last = now

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        partition, table = element
        numeric = _matrix(table, NUMERIC, np.float32)
        tokens = _matrix(table, TOKENS, np.int32)
        yield from self._in_order.submit(
            lambda: score_with_isolation(self._scorer.predict, numeric, tokens),
            lambda result: self._outputs(partition, table, *result),
            timestamp,
            window,
        )

    def finish_bundle(self):
        yield from self._in_order.finish_bundle()

    def _outputs(self, partition, table, scores, failed, error):
        c = self._schema.columns
        bad_score = ~failed & ~((scores >= 0.0) & (scores <= 1.0))
        ok = ~(failed | bad_score)
        scored = pa.table(
            {
                c.review_id: table[c.review_id],
                c.customer_id: table[c.customer_id],
                SCORE: pa.array(scores, pa.float32()),
                MODEL_VERSION: pa.repeat(pa.scalar(self._model_version, pa.string()), len(scores)),
            }
        )
        n_ok = int(ok.sum())
        self._scored.inc(n_ok)
        self._log_progress(n_ok)
        if ok.all():
            yield partition, scored
            return
        yield partition, scored.filter(pa.array(ok))
        reasons = np.where(failed, INFERENCE_ERROR, INVALID_SCORE)[~ok]
        details = np.where(failed, error or "model call failed", "score is NaN or outside [0, 1]")[~ok]
        bad = table.filter(pa.array(~ok))
        bad = bad.append_column(REASON, pa.array(reasons, pa.string())).append_column(DETAIL, pa.array(details))
        self._rejected.inc(bad.num_rows)
        yield beam.pvalue.TaggedOutput(self.REJECTS, (partition, conform(bad, self._schema.rejects_schema())))
