"""Featurizing valid rows with the bundle's tokenizer and scaler, and scoring them with the bundle's model."""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from model.bundle import BundleError, ModelBundle, load_bundle
from transforms.numeric import Scaler
from transforms.schema import DETAIL, FAILURES, MODEL_VERSION, REASON, SCORE, RunSchema, conform, partition_failure
from transforms.text import Tokenizer, TokenizerSpec
from transforms.validate import FEATURIZE_ERROR, INFERENCE_ERROR, INVALID_SCORE

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


# A range of rows whose call fails is halved until the failing rows are found. Two limits keep a failure that is
# not about rows (a broken model, a bug) from costing ~2n calls: when the whole table fails, PROBES single rows
# spread over it are tried first, and if every one of them fails too the table is given up as a partition failure
# (`systemic`); and after MAX_FAILED_CALLS failed calls the rows not yet isolated are rejected together.
PROBES = 8
MIN_ROWS_TO_PROBE = 64
MAX_FAILED_CALLS = 128


class Isolation:
    """What isolate_failures found: the results of the calls that worked, and the rows no call could handle."""

    def __init__(self, n: int):
        self.results: list[tuple[int, int, object]] = []
        self.failed = np.zeros(n, dtype=bool)
        self.first_error: str | None = None
        self.systemic = False
        self.failed_calls = 0

    def note(self, error: Exception) -> None:
        self.failed_calls += 1
        self.first_error = self.first_error or f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def _every_probe_fails(call, n: int, found: Isolation) -> bool:
    for row in np.unique(np.linspace(0, n - 1, PROBES).astype(np.int64)):
        try:
            call(int(row), int(row) + 1)
            return False
        except Exception as e:  # a probe that fails is what this looks for
            found.note(e)
    return True


def isolate_failures(call, n: int, max_failed_calls: int = MAX_FAILED_CALLS) -> Isolation:
    """Calls call(start, stop) over rows [0, n); when a call fails, halves the range until the failing rows are found.

    When the whole table fails and so does every probe row, gives up at once (`systemic`: the failure is not about
    rows); after max_failed_calls failed calls, rejects the rows still pending together.
    """
    found = Isolation(n)
    pending = [(0, n)] if n else []  # a stack: depth first, so the budget isolates some rows rather than none
    while pending:
        start, stop = pending.pop()
        if found.failed_calls >= max_failed_calls:
            found.failed[start:stop] = True
            continue
        try:
            found.results.append((start, stop, call(start, stop)))
        except Exception as e:  # Any failure isolates rows instead of failing the run.
            found.note(e)
            if stop - start == n and n >= MIN_ROWS_TO_PROBE and _every_probe_fails(call, n, found):
                found.systemic = True
                found.failed[:] = True
                return found
            if stop - start == 1:
                found.failed[start] = True
            else:
                middle = (start + stop) // 2
                pending.extend([(middle, stop), (start, middle)])
    return found


def score_with_isolation(predict, numeric: np.ndarray, tokens: np.ndarray, max_failed_calls: int = MAX_FAILED_CALLS):
    """Scores rows, isolating the rows the model fails on (see isolate_failures).

    Returns (scores, failed mask, first error message, systemic); a failed row's score is NaN.
    """
    n = len(numeric)
    scores = np.full(n, np.nan, dtype=np.float32)
    found = isolate_failures(lambda a, b: predict(numeric[a:b], tokens[a:b]), n, max_failed_calls)
    for start, stop, values in found.results:
        scores[start:stop] = values
    return scores, found.failed, found.first_error, found.systemic


class LoadedBundle:
    """What one worker process holds of the run's bundle: the bundle, its featurizer and its compiled scorers."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.featurizer = Featurizer.from_bundle(bundle)
        self._scorers: dict = {}
        self._lock = threading.Lock()

    def scorer(self, batch_size: int, jit_compile: bool) -> ModelScorer:
        with self._lock:  # DoFn instances on several threads share this object
            key = (batch_size, jit_compile)
            if key not in self._scorers:
                self._scorers[key] = ModelScorer(self.bundle.model, batch_size, jit_compile)
            return self._scorers[key]


class PinnedBundle:
    """The run's model bundle, pinned to the content version the launcher resolved.

    Loaded once per worker process (one shared.Shared handle, pickled into both Featurize and ScoreReviews, so
    both get the same object) and checked against the planned version: a bundle replaced during the run fails the
    run, naming both versions and the path, instead of mixing vocabularies and models in one partition.
    """

    def __init__(self, model_dir: str, model_version: str | None = None):
        self.model_dir = model_dir
        self.model_version = model_version
        self._shared = shared.Shared()

    def _load(self) -> LoadedBundle:
        bundle = load_bundle(self.model_dir)
        if self.model_version is not None and bundle.model_version != self.model_version:
            raise BundleError(
                f"model bundle {self.model_dir}: version {bundle.model_version} is not the {self.model_version} "
                f"this run was planned with (the bundle changed during the run; use immutable version folders)"
            )
        return LoadedBundle(bundle)

    def acquire(self) -> LoadedBundle:
        return self._shared.acquire(self._load, tag=f"bundle:{self.model_dir}:{self.model_version}")


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


def _rejects(table: pa.Table, mask: np.ndarray, reasons, details, schema: RunSchema) -> pa.Table:
    bad = table.filter(pa.array(mask))
    bad = bad.append_column(REASON, pa.array(reasons, pa.string())).append_column(
        DETAIL, pa.array(details, pa.string())
    )
    return conform(bad, schema.rejects_schema())


class Featurize(beam.DoFn):
    """Adds the model's inputs (scaled numeric features and token ids) to each (partition, table) pair, on
    `threads` background threads, keeping the input order.

    A table the featurizer fails on is halved until the failing rows are found; they go to the 'rejects' output as
    `featurize_error`, and a failure on every row to the FAILURES output. Also emits (partition, (words,
    out-of-vocabulary words)) on the 'vocabulary_stats' output.
    """

    STATS = "vocabulary_stats"
    REJECTS = "rejects"

    def __init__(self, bundle: PinnedBundle | str, schema: RunSchema, threads: int = 2):
        self._bundle = bundle if isinstance(bundle, PinnedBundle) else PinnedBundle(bundle)
        self._schema = schema
        self._threads = threads

    def setup(self):
        self._featurizer = self._bundle.acquire().featurizer
        self._in_order = _InOrder(self._threads, "featurize")

    def teardown(self):
        if getattr(self, "_in_order", None) is not None:
            self._in_order.close()

    def start_bundle(self):
        self._in_order.start_bundle()

    def _featurize(self, table: pa.Table):
        def call(start, stop):
            part = table.slice(start, stop - start)
            numeric, tokens, words, oov = self._featurizer.featurize(part, self._schema.columns.review_text)
            part = part.append_column(NUMERIC, _matrix_column(numeric)).append_column(TOKENS, _matrix_column(tokens))
            return part, words, oov

        found = isolate_failures(call, table.num_rows)
        if not found.results and not found.failed.any():  # an empty table
            return (None, 0, 0), None, None
        if not found.failed.any():  # the common case: one call on the whole table
            return found.results[0][2], None, None
        if found.systemic:
            return None, None, f"featurizing failed on every row of a {table.num_rows}-row table: {found.first_error}"
        results = sorted(found.results, key=lambda r: r[0])
        parts = [r[2][0] for r in results]
        words, oov = sum(r[2][1] for r in results), sum(r[2][2] for r in results)
        featurized = pa.concat_tables(parts) if parts else None
        rejects = _rejects(
            table,
            found.failed,
            [FEATURIZE_ERROR] * int(found.failed.sum()),
            [found.first_error] * int(found.failed.sum()),
            self._schema,
        )
        return (featurized, words, oov), rejects, None

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        partition, table = element

        def emit(result):
            featurized, rejects, failure = result
            if failure is not None:
                yield beam.pvalue.TaggedOutput(FAILURES, (partition, partition_failure("featurize", failure)))
                return
            table, words, oov = featurized
            if table is not None and table.num_rows:
                yield partition, table
            yield beam.pvalue.TaggedOutput(self.STATS, (partition, (words, oov)))
            if rejects is not None:
                yield beam.pvalue.TaggedOutput(self.REJECTS, (partition, rejects))

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
        self,
        bundle: PinnedBundle | str,
        schema: RunSchema,
        batch_size: int = 4096,
        jit_compile: bool = True,
        threads: int = 2,
        max_failed_calls: int = MAX_FAILED_CALLS,
    ):
        self._max_failed_calls = max_failed_calls
        self._bundle = bundle if isinstance(bundle, PinnedBundle) else PinnedBundle(bundle)
        self._schema = schema
        self._batch_size = batch_size
        self._jit_compile = jit_compile
        self._threads = threads
        self._scored = beam.metrics.Metrics.counter("sentiment", "rows_scored")
        self._rejected = beam.metrics.Metrics.counter("sentiment", "rows_rejected_at_inference")

    def setup(self):
        loaded = self._bundle.acquire()
        self._model_version = loaded.bundle.model_version
        self._scorer = loaded.scorer(self._batch_size, self._jit_compile)
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
            lambda: score_with_isolation(self._scorer.predict, numeric, tokens, self._max_failed_calls),
            lambda result: self._outputs(partition, table, *result),
            timestamp,
            window,
        )

    def finish_bundle(self):
        yield from self._in_order.finish_bundle()

    def _outputs(self, partition, table, scores, failed, error, systemic):
        if systemic:
            message = f"the model failed on every call for a {table.num_rows}-row table: {error}"
            yield beam.pvalue.TaggedOutput(FAILURES, (partition, partition_failure("infer", message)))
            return
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
        rejects = _rejects(table, ~ok, reasons, details, self._schema)
        self._rejected.inc(rejects.num_rows)
        yield beam.pvalue.TaggedOutput(self.REJECTS, (partition, rejects))
