"""The Featurize stage: the bundle's tokenizer and scaler turn valid rows into the model's two inputs."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from transforms.isolation import isolate_failures
from transforms.numeric import Scaler
from transforms.pinned import PinnedBundle
from transforms.schema import DETAIL, FAILURES, REASON, RunSchema, conform, partition_failure
from transforms.table_coder import PARTITION_TABLE
from transforms.text import Tokenizer, TokenizerSpec
from transforms.validate import FEATURIZE_ERROR

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


def matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, width) numpy matrix as a fixed-size-list column (the inverse of matrix)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def matrix(table: pa.Table, name: str, dtype) -> np.ndarray:
    """A fixed-size-list column as an (n, width) numpy matrix."""
    column = table[name].combine_chunks()
    width = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


class InOrder:
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

    def add(self, work, emit, timestamp, window) -> None:
        """Starts work() without handing any result back: for finish_bundle, whose outputs finish_bundle emits."""
        self._pending.append((self._executor.submit(work), emit, timestamp, window))

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


def reject_rows(table: pa.Table, mask: np.ndarray, reasons, details, schema: RunSchema) -> pa.Table:
    bad = table.filter(pa.array(mask))
    bad = bad.append_column(REASON, pa.array(reasons, pa.string())).append_column(
        DETAIL, pa.array(details, pa.string())
    )
    return conform(bad, schema.rejects_schema())


@beam.typehints.with_output_types(PARTITION_TABLE)
class FeaturizeTables(beam.DoFn):
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
        self._featurizer = Featurizer.from_bundle(self._bundle.acquire())
        self._in_order = InOrder(self._threads, "featurize")

    def teardown(self):
        if getattr(self, "_in_order", None) is not None:
            self._in_order.close()

    def start_bundle(self):
        self._in_order.start_bundle()

    def _featurize(self, table: pa.Table):
        def call(start, stop):
            part = table.slice(start, stop - start)
            numeric, tokens, words, oov = self._featurizer.featurize(part, self._schema.columns.review_text)
            part = part.append_column(NUMERIC, matrix_column(numeric)).append_column(TOKENS, matrix_column(tokens))
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
        rejects = reject_rows(
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


class Featurize(beam.PTransform):
    """(partition, valid rows) → (partition, rows with the model's inputs); tagged outputs REJECTS
    (`featurize_error` rows), FAILURES (a table no row of which featurizes) and STATS (words, out-of-vocabulary)."""

    STATS = FeaturizeTables.STATS
    REJECTS = FeaturizeTables.REJECTS

    def __init__(self, bundle: PinnedBundle | str, schema: RunSchema, threads: int = 2):
        super().__init__()
        self._dofn = FeaturizeTables(bundle, schema, threads)

    def expand(self, tables):
        return tables | "FeaturizeTables" >> beam.ParDo(self._dofn).with_outputs(
            self.STATS, self.REJECTS, FAILURES, main="rows"
        )
