"""The shuffle join, for customer tables too large to broadcast: customers and review keys meet in hash buckets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.customer_table import CHECK, HAS_CUSTOMER, KEY, ROW_KEY, CustomerFacts, CustomerTable
from transforms.id_hashing import buckets_of, id_keys
from transforms.join_plan import JoinPlan
from transforms.row_keys import BLOCK_BITS, column_numpy, row_blocks, split_by, table_row_keys
from transforms.schema import Columns
from transforms.table_coder import PARTITION_TABLE

# Customers and the reviews' (key, row) pairs meet in hash buckets; each bucket de-duplicates its customers exactly
# like the broadcast table and answers its reviews; the answers come back to the review batches by row key, through
# a side input keyed by block (a worker fetches only the blocks it reads).


def review_key_part(ids: pa.Table, columns: Columns) -> pa.Table:
    """(KEY, [CHECK], ROW_KEY) of every review with a customer id: what the shuffle join needs of a review."""
    if ids[columns.customer_id].null_count:
        ids = ids.filter(pc.is_valid(ids[columns.customer_id]))
    keys, checks = id_keys(ids[columns.customer_id])
    part = {KEY: pa.array(keys)}
    if checks is not None:
        part[CHECK] = pa.array(checks)
    part[ROW_KEY] = pa.array(table_row_keys(ids))
    return pa.table(part)


def join_bucket(
    customer_parts: Sequence[pa.Table], review_parts: Sequence[pa.Table], columns: Columns, paths: Sequence[str] = ()
) -> tuple[pa.Table | None, int]:
    """One bucket of the shuffle join: (ROW_KEY, HAS_CUSTOMER, features) for each review key, and the bucket's
    number of unique customers."""
    table = CustomerTable.from_parts(customer_parts, columns, paths)
    reviews = [p for p in review_parts if p.num_rows]
    if not reviews:
        return None, table.facts.unique
    keys = pa.concat_tables(reviews) if len(reviews) > 1 else reviews[0]
    checks = column_numpy(keys[CHECK]) if CHECK in keys.column_names else None
    position, found = table.probe(column_numpy(keys[KEY]), checks)
    answers = {ROW_KEY: keys[ROW_KEY], HAS_CUSTOMER: pa.array(found)}
    answers.update((name, table.features_at(position, found, name)) for name in columns.features)
    return pa.table(answers), table.facts.unique


def sorted_by_row(parts: Iterable[pa.Table]) -> pa.Table:
    parts = list(parts)
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return table.take(pa.array(np.argsort(column_numpy(table[ROW_KEY]), kind="stable")))


def attach_answers(reviews: pa.Table, answers: Sequence[pa.Table], columns: Columns) -> pa.Table:
    """The shuffle join's answers for these reviews (looked up by row key) appended like join_customers does.

    Every review with a customer id must have an answer: a missing one means the id pass and the read disagree,
    which fails the run instead of turning the review into a missing_customer reject.
    """
    keys = table_row_keys(reviews)
    n = len(keys)
    ids = reviews[columns.customer_id]
    has_id = column_numpy(pc.is_valid(ids)) if ids.null_count else np.ones(n, dtype=bool)
    table = pa.concat_tables(answers) if len(answers) > 1 else (answers[0] if answers else None)
    if table is None or table.num_rows == 0:
        position, present = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    else:
        answer_keys = column_numpy(table[ROW_KEY])
        position = np.searchsorted(answer_keys, keys).clip(0, len(answer_keys) - 1)
        present = answer_keys[position] == keys
    if (has_id & ~present).any():
        row = int(keys[np.flatnonzero(has_id & ~present)[0]])
        raise RuntimeError(f"shuffle join: no answer for the review at file {row >> 40}, row {row & (2**40 - 1)}")
    joined = reviews
    if not present.any():
        for name in columns.features:
            joined = joined.append_column(name, pa.nulls(n, pa.float64()))
        return joined.append_column(HAS_CUSTOMER, pa.array(np.zeros(n, dtype=bool)))
    found = present & column_numpy(table[HAS_CUSTOMER])[position]
    take = pa.array(position, mask=~found)
    for name in columns.features:
        joined = joined.append_column(name, table[name].take(take).combine_chunks())
    return joined.append_column(HAS_CUSTOMER, pa.array(found))


def _bucket_review_keys(element, columns: Columns, buckets: int):
    _, ids = element
    part = review_key_part(ids, columns)
    yield from split_by(part, buckets_of(column_numpy(part[KEY]), buckets))


class _JoinBucket(beam.DoFn):
    FACTS = "facts"

    def __init__(self, columns: Columns, paths: Sequence[str]):
        self._columns, self._paths = columns, tuple(paths)

    def process(self, element):
        _, grouped = element
        answers, unique = join_bucket(list(grouped["customers"]), list(grouped["reviews"]), self._columns, self._paths)
        yield beam.pvalue.TaggedOutput(self.FACTS, CustomerFacts(0, 0, unique))
        if answers is not None:
            yield from split_by(answers, column_numpy(answers[ROW_KEY]) >> BLOCK_BITS)


def _sorted_block(block, parts):
    return block, sorted_by_row(parts)


def _attach_pair(element, answers, columns):
    partition, table = element
    blocks = row_blocks(table_row_keys(table)) if table.num_rows else []
    return partition, attach_answers(table, [a for b in blocks for a in answers[int(b)]], columns)


def shuffle_join(reviews, parts, review_keys, columns: Columns, plan: JoinPlan):
    """(joined reviews, CustomerFacts per bucket): `parts` ((bucket, compact part) pairs) and `review_keys`
    ((partition, table) pairs with customer_id, FILE_INDEX and ROW_INDEX) grouped by bucket and answered there."""
    review_parts = review_keys | "BucketReviewKeys" >> beam.FlatMap(_bucket_review_keys, columns, plan.buckets)
    answered = (
        {"customers": parts, "reviews": review_parts}
        | "GroupBuckets" >> beam.CoGroupByKey()
        | "JoinBuckets" >> beam.ParDo(_JoinBucket(columns, plan.paths)).with_outputs(_JoinBucket.FACTS, main="answers")
    )
    answers = (
        answered.answers | "GroupAnswersByBlock" >> beam.GroupByKey() | "SortAnswers" >> beam.MapTuple(_sorted_block)
    )
    side = beam.pvalue.AsMultiMap(answers)
    joined = reviews | "AttachAnswers" >> beam.Map(_attach_pair, answers=side, columns=columns).with_output_types(
        PARTITION_TABLE
    )
    return joined, answered[_JoinBucket.FACTS]
