"""The Infer stage: the bundle's model on its runtime, called on background threads or through RunInference."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, RunInference

from model.bundle import ModelBundle
from model.runtime import LITERT, TENSORFLOW, ModelRuntime
from transforms.beam_compat import restore_inference_resource_module
from transforms.featurize import NUMERIC, TOKENS, InOrder, matrix, reject_rows
from transforms.isolation import MAX_FAILED_CALLS, score_with_isolation
from transforms.pinned import PinnedBundle
from transforms.schema import FAILURES, MODEL_VERSION, SCORE, PartitionFailure, RunSchema, partition_failure
from transforms.table_coder import PARTITION_TABLE
from transforms.validate import INFERENCE_ERROR, INVALID_SCORE

_LOG = logging.getLogger(__name__)
restore_inference_resource_module()  # RunInference's model-memory metric, without torch


class ScoredTable(NamedTuple):
    """What scoring one featurized table gives: its scored rows, its rejected rows, or a partition failure."""

    partition: str
    scores: pa.Table | None
    rejects: pa.Table | None
    failure: PartitionFailure | None


def score_table(model: ModelRuntime, partition: str, table: pa.Table, schema: RunSchema, max_failed_calls: int):
    """Scores a featurized table; rows the model fails on (bisection, see isolate_failures) or whose score is NaN
    or outside [0, 1] become rejects with a reason; a failure on every probe row is a partition failure."""
    numeric, tokens = matrix(table, NUMERIC, np.float32), matrix(table, TOKENS, np.int32)
    scores, failed, error, systemic = score_with_isolation(model.predict, numeric, tokens, max_failed_calls)
    if systemic:
        message = f"the model failed on every call for a {table.num_rows}-row table: {error}"
        return ScoredTable(partition, None, None, partition_failure("infer", message))
    c = schema.columns
    bad_score = ~failed & ~((scores >= 0.0) & (scores <= 1.0))
    ok = ~(failed | bad_score)
    scored = pa.table(
        {
            c.review_id: table[c.review_id],
            c.customer_id: table[c.customer_id],
            SCORE: pa.array(scores, pa.float32()),
            MODEL_VERSION: pa.repeat(pa.scalar(model.version(), pa.string()), len(scores)),
        }
    )
    if ok.all():
        return ScoredTable(partition, scored, None, None)
    reasons = np.where(failed, INFERENCE_ERROR, INVALID_SCORE)[~ok]
    details = np.where(failed, error or "model call failed", "score is NaN or outside [0, 1]")[~ok]
    return ScoredTable(partition, scored.filter(pa.array(ok)), reject_rows(table, ~ok, reasons, details, schema), None)


class ReviewModelHandler(ModelHandler):
    """The bundle's model for RunInference, on the runtime a subclass opens (one handler per runtime).

    Elements are (partition, featurized table) pairs, already batched by the read: batches of one element (Beam's
    min/max_batch_size) keep them one per call (no re-batching). The runtime pads each model call to its fixed
    shape; rows it fails on are isolated by bisection inside run_inference and come back as rejects, so a bad row
    never fails a batch. load_model takes the worker's PinnedBundle (shared with Featurize): one bundle load per
    process. share_across_processes: one model per machine (Beam's large_model) instead of one per process.
    """

    runtime = ""

    def __init__(
        self,
        bundle: PinnedBundle | str,
        schema: RunSchema,
        threads: int = 2,
        max_failed_calls: int = MAX_FAILED_CALLS,
        share_across_processes: bool = False,
    ):
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=share_across_processes)
        self._bundle = bundle if isinstance(bundle, PinnedBundle) else PinnedBundle(bundle)
        self._schema = schema
        self._threads = threads
        self._max_failed_calls = max_failed_calls

    @property
    def threads(self) -> int:
        return self._threads

    def load_model(self) -> ModelRuntime:
        return self._open(self._bundle.acquire())

    def _open(self, bundle: ModelBundle) -> ModelRuntime:
        raise NotImplementedError

    def run_inference(self, batch: Sequence, model: ModelRuntime, inference_args=None) -> Iterable[ScoredTable]:
        return [score_table(model, p, table, self._schema, self._max_failed_calls) for p, table in batch]

    def get_num_bytes(self, batch: Sequence) -> int:
        return sum(table.nbytes for _, table in batch)

    def get_metrics_namespace(self) -> str:
        return f"sentiment_{self.runtime}"


class LiteRTModelHandler(ReviewModelHandler):
    """The bundle's LiteRT conversion (no TensorFlow), at the batch size it was converted with."""

    runtime = LITERT

    def _open(self, bundle: ModelBundle) -> ModelRuntime:
        return bundle.litert(self._threads)


class TensorflowModelHandler(ReviewModelHandler):
    """The bundle's Keras model through TensorFlow, XLA-compiled unless jit_compile is off."""

    runtime = TENSORFLOW

    def __init__(
        self,
        bundle: PinnedBundle | str,
        schema: RunSchema,
        batch_size: int = 4096,
        jit_compile: bool = True,
        threads: int = 2,
        **kwargs,
    ):
        super().__init__(bundle, schema, threads, **kwargs)
        self._batch_size = batch_size
        self._jit_compile = jit_compile

    def _open(self, bundle: ModelBundle) -> ModelRuntime:
        return bundle.tensorflow(self._batch_size, self._jit_compile, self._threads)


@beam.typehints.with_output_types(PARTITION_TABLE)
class RouteScores(beam.DoFn):
    """Scored rows to the main output, rejects and partition failures to their tagged outputs; counts and logs."""

    REJECTS = "rejects"

    def setup(self):
        self._scored = beam.metrics.Metrics.counter("sentiment", "rows_scored")
        self._rejected = beam.metrics.Metrics.counter("sentiment", "rows_rejected_at_inference")
        self._rows, self._start, self._last = 0, time.monotonic(), time.monotonic()

    def process(self, result: ScoredTable):
        if result.failure is not None:
            yield beam.pvalue.TaggedOutput(FAILURES, (result.partition, result.failure))
            return
        self._scored.inc(result.scores.num_rows)
        self._log_progress(result.scores.num_rows)
        yield result.partition, result.scores
        if result.rejects is not None:
            self._rejected.inc(result.rejects.num_rows)
            yield beam.pvalue.TaggedOutput(self.REJECTS, (result.partition, result.rejects))

    def _log_progress(self, rows: int) -> None:
        self._rows += rows
        now = time.monotonic()
        if now - self._last >= 30:
            _LOG.info("scored %d rows in this worker so far, %.0f rows/s", self._rows, self._rows / (now - self._start))
            self._last = now


class ScoreTables(beam.DoFn):
    """The handler's run_inference on `threads` background threads, results in input order: while the model scores
    one table the thread that drives Beam reads, joins, validates and featurizes the next ones, instead of waiting
    for the model (RunInference calls it on that thread). At most `threads` tables wait. The model is the handler's
    load_model: one runtime per worker process, from the PinnedBundle (model.bundle caches it).

    Tables are scored in whole model calls: the rows past a table's last full call (the runtime pads every call to
    its fixed batch size) wait for the next table of the same partition, and the bundle's last ones are scored by
    finish_bundle. Measured (benchmarks/README.md, issue 27): each read batch less its rejects ended in a padded
    call, 252 calls where 242 suffice on a 1M-review night (4 % of the model's work), more where more rows are
    rejected; the model stage took 0.5-1 CPU-µs a row less.
    """

    def __init__(self, handler: ReviewModelHandler, threads: int):
        self._handler = handler
        self._threads = threads

    def setup(self):
        self._model = self._handler.load_model()
        self._in_order = InOrder(self._threads, "score")

    def teardown(self):
        if getattr(self, "_in_order", None) is not None:
            self._in_order.close()

    def start_bundle(self):
        self._in_order.start_bundle()
        self._rest = {}  # partition -> (rows short of a whole model call, timestamp, window)

    def _work(self, partition: str, table: pa.Table):
        return lambda: self._handler.run_inference([(partition, table)], self._model)

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        partition, table = element
        if partition in self._rest:
            table = pa.concat_tables([self._rest.pop(partition)[0], table])
        whole = table.num_rows - table.num_rows % self._model.batch_size
        if whole < table.num_rows:
            self._rest[partition] = (table.slice(whole), timestamp, window)
        if whole:
            yield from self._in_order.submit(
                self._work(partition, table.slice(0, whole)), lambda results: results, timestamp, window
            )

    def finish_bundle(self):
        for partition, (table, timestamp, window) in self._rest.items():
            self._in_order.add(self._work(partition, table), lambda results: results, timestamp, window)
        self._rest = {}
        yield from self._in_order.finish_bundle()


class ScoreReviews(beam.PTransform):
    """(partition, featurized table) → (partition, scores); tagged outputs REJECTS (`inference_error`,
    `invalid_score` rows) and FAILURES (a table the model fails on as a whole).

    In a worker process of its own the model scores on background threads (ScoreTables), overlapped with the
    stages before it. A model shared across a machine's processes (share_model_across_processes) goes through
    Beam's RunInference, which owns that sharing, and its metrics (batch sizes, latencies, model load time)."""

    REJECTS = RouteScores.REJECTS

    def __init__(self, handler: ReviewModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, tables):
        if self._handler.share_model_across_processes():
            scored = tables | "RunInference" >> RunInference(self._handler)
        else:
            scored = tables | "ScoreTables" >> beam.ParDo(ScoreTables(self._handler, self._handler.threads))
        return scored | "RouteScores" >> beam.ParDo(RouteScores()).with_outputs(self.REJECTS, FAILURES, main="scores")
