"""Row-level checks that split joined reviews into rows to score and reason-coded rejects."""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.customer_table import HAS_CUSTOMER
from transforms.id_hashing import buckets_of, id_keys
from transforms.row_keys import BLOCK_BITS, row_blocks, row_keys, split_by
from transforms.schema import DETAIL, FILE_INDEX, REASON, ROW_INDEX, Columns, RunSchema, conform
from transforms.table_coder import PARTITION_TABLE

# Checked in this order; a row failing several checks gets the first reason only, so it is rejected once.
NULL_REVIEW_ID = "null_review_id"
DUPLICATE_REVIEW_ID = "duplicate_review_id"
NULL_CUSTOMER_ID = "null_customer_id"
MISSING_CUSTOMER = "missing_customer"
NULL_TEXT = "null_text"
INVALID_UTF8 = "invalid_utf8"
EMPTY_TEXT = "empty_text"
NULL_FEATURE = "null_feature"
NON_FINITE_FEATURE = "non_finite_feature"
FEATURIZE_ERROR = "featurize_error"
INFERENCE_ERROR = "inference_error"
INVALID_SCORE = "invalid_score"
REASONS = (
    NULL_REVIEW_ID,
    DUPLICATE_REVIEW_ID,
    NULL_CUSTOMER_ID,
    MISSING_CUSTOMER,
    NULL_TEXT,
    INVALID_UTF8,
    EMPTY_TEXT,
    NULL_FEATURE,
    NON_FINITE_FEATURE,
    FEATURIZE_ERROR,
    INFERENCE_ERROR,
    INVALID_SCORE,
)

# A partition with more review rows than this looks for duplicate ids in several hash buckets.
DUPLICATE_BUCKET_ROWS = 4_000_000

_DETAILS = {
    NULL_REVIEW_ID: "review_id is null",
    DUPLICATE_REVIEW_ID: "review_id already seen in this partition; the first by (file, row) is scored",
    NULL_CUSTOMER_ID: "customer_id is null",
    MISSING_CUSTOMER: "no customer record with this customer_id",
    NULL_TEXT: "review text is null",
    INVALID_UTF8: "review text is not valid UTF-8 (in a string column its invalid bytes are shown as \\xNN)",
    EMPTY_TEXT: "review text is empty or only whitespace",
    NULL_FEATURE: "a numeric customer feature is null",
    NON_FINITE_FEATURE: "a numeric customer feature is NaN, infinite or beyond float32 range",
}


def _column(table: pa.Table, name: str) -> pa.Array:
    return table[name].combine_chunks()


def duplicate_row_keys(tables: Iterable[pa.Table], columns: Columns) -> np.ndarray:
    """Row keys of every review whose review_id appeared earlier in (file, row) order; sorted."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return np.zeros(0, dtype=np.int64)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table[columns.review_id].null_count:
        table = table.filter(pc.is_valid(table[columns.review_id]))
    if table.num_rows < 2:
        return np.zeros(0, dtype=np.int64)
    ids = _column(table, columns.review_id)
    # Exact integer codes for string ids: one hash table per call (per partition and bucket), not per batch.
    codes = ids.to_numpy() if pa.types.is_integer(ids.type) else pc.dictionary_encode(ids).indices.to_numpy()
    order = np.argsort(codes)  # any order within an id: the smallest row key of each is kept
    sorted_codes = codes[order]
    first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    if first.all():
        return np.zeros(0, dtype=np.int64)
    keys = row_keys(_column(table, FILE_INDEX).to_numpy(), _column(table, ROW_INDEX).to_numpy())[order]
    starts = np.flatnonzero(first)
    kept = np.minimum.reduceat(keys, starts)  # the first occurrence by (file, row) of each id is scored
    return np.sort(keys[keys != np.repeat(kept, np.diff(np.r_[starts, len(keys)]))])


def _bucket_review_ids(element, columns: Columns, buckets: dict[str, int]):
    partition, ids = element
    ids = ids.select([columns.review_id, FILE_INDEX, ROW_INDEX])  # the id pass may carry customer ids too
    n = buckets.get(partition, 1)
    if n == 1:
        yield (partition, 0), ids
        return
    valid = ids.filter(pc.is_valid(ids[columns.review_id])) if ids[columns.review_id].null_count else ids
    for bucket, part in split_by(valid, buckets_of(id_keys(valid[columns.review_id])[0], n)):
        yield (partition, bucket), part


def _duplicates_by_block(element, columns: Columns):
    _, tables = element
    keys = duplicate_row_keys(tables, columns)
    if not len(keys):
        return
    blocks = keys >> BLOCK_BITS
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(keys)], strict=True):
        yield int(blocks[s]), keys[s:e]


class FindDuplicateReviews(beam.PTransform):
    """(partition, id table) pairs → (block, sorted row keys of duplicate reviews), for batch_duplicates.

    Ids are grouped by partition and, for a partition of more than DUPLICATE_BUCKET_ROWS rows, by a hash of the id,
    so no worker needs a whole large day; the result is keyed by block so that each Validate worker fetches only the
    keys of the rows it checks, not every duplicate of the run.
    """

    def __init__(self, columns: Columns, rows_by_partition: dict[str, int]):
        super().__init__()
        self._columns = columns
        self._buckets = {p: max(1, -(-rows // DUPLICATE_BUCKET_ROWS)) for p, rows in rows_by_partition.items()}

    def expand(self, ids):
        return (
            ids
            | "BucketIds" >> beam.FlatMap(_bucket_review_ids, self._columns, self._buckets)
            | "GroupIds" >> beam.GroupByKey()
            | "DuplicatesByBlock" >> beam.FlatMap(_duplicates_by_block, self._columns)
        )


def batch_duplicates(table: pa.Table, duplicates) -> np.ndarray | None:
    """The sorted duplicate row keys of the blocks a batch's rows fall in, from FindDuplicateReviews' output as a
    multimap side input; None when there are none."""
    if not table.num_rows:
        return None
    keys = row_keys(_column(table, FILE_INDEX).to_numpy(), _column(table, ROW_INDEX).to_numpy())
    arrays = [a for block in row_blocks(keys) for a in duplicates[int(block)]]
    if not arrays:
        return None
    return arrays[0] if len(arrays) == 1 else np.sort(np.concatenate(arrays))


def _as_binary(text: pa.Array) -> pa.Array:
    """The same bytes typed as binary (zero copy): the one form every UTF-8 check can read."""
    if pa.types.is_string(text.type):
        return text.view(pa.binary())
    if pa.types.is_large_string(text.type):
        return text.view(pa.large_binary())
    return text


def _utf8_valid(text: pa.Array) -> np.ndarray | None:
    """None when every value is valid UTF-8 (one vectorized check, the common case); else a mask, null counting as
    valid here (null_text catches it). A string column can hold invalid UTF-8 too: Parquet readers do not check."""
    try:
        if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):
            text.cast(pa.string())
        else:
            text.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    # Arrow has no per-value UTF-8 check, and a file that reaches here is already broken: decode row by row.
    valid = np.ones(len(text), dtype=bool)
    for i, value in enumerate(_as_binary(text).to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                valid[i] = False
    return valid


def _escaped_text(text: pa.Array, invalid: np.ndarray) -> pa.Array:
    """String text with each invalid value's bad bytes escaped as \\xNN, so a reject file stays valid UTF-8."""
    values = _as_binary(text).to_pylist()
    for i in np.flatnonzero(invalid):  # only the rare invalid rows, which no Arrow kernel can repair
        values[i] = values[i].decode("utf-8", errors="backslashreplace").encode("utf-8")
    return pa.array(values, pa.binary()).cast(pa.string())


def check_rows(joined: pa.Table, schema: RunSchema, duplicate_keys: np.ndarray | None = None):
    """Splits joined rows into (valid, rejects): valid rows are ready to featurize, rejects carry reason and detail."""
    c = schema.columns
    n = joined.num_rows
    text = _column(joined, c.review_text)
    checks = []
    checks.append((NULL_REVIEW_ID, _column(joined, c.review_id).is_null().to_numpy(zero_copy_only=False)))
    if duplicate_keys is not None and len(duplicate_keys):
        keys = row_keys(_column(joined, FILE_INDEX).to_numpy(), _column(joined, ROW_INDEX).to_numpy())
        at = np.searchsorted(duplicate_keys, keys).clip(0, len(duplicate_keys) - 1)  # the keys are sorted
        checks.append((DUPLICATE_REVIEW_ID, duplicate_keys[at] == keys))
    checks.append((NULL_CUSTOMER_ID, _column(joined, c.customer_id).is_null().to_numpy(zero_copy_only=False)))
    checks.append((MISSING_CUSTOMER, ~_column(joined, HAS_CUSTOMER).to_numpy(zero_copy_only=False)))
    checks.append((NULL_TEXT, text.is_null().to_numpy(zero_copy_only=False)))
    valid_utf8 = _utf8_valid(text)
    raw_text = text
    if valid_utf8 is not None:
        checks.append((INVALID_UTF8, ~valid_utf8))
        text = pc.if_else(pa.array(valid_utf8), _as_binary(text), pa.scalar(b"", _as_binary(text).type))
        if schema.text_kind == "string":
            raw_text = _escaped_text(raw_text, ~valid_utf8)
    if text.type != pa.string():
        text = text.cast(pa.string())
    blank = pc.or_(pc.equal(pc.binary_length(text), 0), pc.utf8_is_space(text)).fill_null(False)
    checks.append((EMPTY_TEXT, blank.to_numpy(zero_copy_only=False)))
    features = [_column(joined, f) for f in c.features]
    if features:
        null_feature = np.any([f.is_null().to_numpy(zero_copy_only=False) for f in features], axis=0)
        values = np.column_stack([f.fill_null(0.0).to_numpy(zero_copy_only=False) for f in features])
        checks.append((NULL_FEATURE, null_feature))
        # The model takes float32: a finite float64 beyond float32's range would reach it as inf.
        representable = np.isfinite(values) & (np.abs(values) <= np.finfo(np.float32).max)
        checks.append((NON_FINITE_FEATURE, ~np.all(representable, axis=1)))

    reason = np.full(n, -1, dtype=np.int16)
    for code, failed in checks:
        reason[(reason < 0) & failed] = REASONS.index(code)
    ok = reason < 0

    text_index = joined.schema.get_field_index(c.review_text)
    valid = joined.filter(pa.array(ok))
    if schema.text_kind == "binary" or valid_utf8 is not None:
        valid = valid.set_column(text_index, c.review_text, text.filter(pa.array(ok)))
    valid = valid.drop_columns([HAS_CUSTOMER])
    if ok.all():
        return valid, schema.rejects_schema().empty_table()
    if raw_text is not text:
        joined = joined.set_column(text_index, c.review_text, raw_text)
    bad = joined.filter(pa.array(~ok))
    index = pa.array(reason[~ok].astype(np.int32))
    codes = pa.array(REASONS, pa.string()).take(index)
    details = pa.array([_DETAILS.get(code, code) for code in REASONS], pa.string()).take(index)
    bad = bad.append_column(REASON, codes).append_column(DETAIL, details)
    return valid, conform(bad, schema.rejects_schema())


@beam.typehints.with_output_types(PARTITION_TABLE)
class ValidateRows(beam.DoFn):
    """Emits valid (partition, table) pairs on the main output and rejects on the 'rejects' output."""

    REJECTS = "rejects"

    def __init__(self, schema: RunSchema):
        self._schema = schema

    def process(self, element, duplicates):
        partition, table = element
        valid, rejects = check_rows(table, self._schema, batch_duplicates(table, duplicates))
        if valid.num_rows:
            yield partition, valid
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(self.REJECTS, (partition, rejects))


class Validate(beam.PTransform):
    """(partition, joined table) → {"valid": (partition, valid rows), "rejects": (partition, rejects with reasons)};
    a review id seen more than once (the duplicates side input, from FindDuplicateReviews) is rejected too."""

    def __init__(self, schema: RunSchema, duplicates):
        super().__init__()
        self._schema = schema
        self._duplicates = duplicates

    def expand(self, tables):
        results = tables | "ValidateRows" >> beam.ParDo(
            ValidateRows(self._schema), duplicates=beam.pvalue.AsMultiMap(self._duplicates)
        ).with_outputs(ValidateRows.REJECTS, main="valid")
        return {"valid": results.valid, "rejects": results[ValidateRows.REJECTS]}
