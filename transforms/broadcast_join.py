"""The broadcast join: every worker holds the whole customer table, as hash shards, and probes it per review batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.customer_table import HAS_CUSTOMER, CustomerTable, CustomerTableFn, release_unused_memory
from transforms.id_hashing import buckets_of, id_keys
from transforms.join_plan import JoinPlan
from transforms.row_keys import column_numpy
from transforms.schema import Columns
from transforms.table_coder import PARTITION_TABLE


def _lookup(
    shards: Sequence[CustomerTable], keys: np.ndarray, checks: np.ndarray | None, valid: np.ndarray, columns: Columns
) -> tuple[np.ndarray, list[pa.Array]]:
    """found and each feature column for some ids (as keys and checks) in a table held as hash shards."""
    n = len(keys)
    if len(shards) == 1:
        position, found = shards[0].probe(keys, checks)
        found &= valid
        return found, [shards[0].features_at(position, found, name) for name in columns.features]
    shard_of = buckets_of(keys, len(shards))
    order = np.argsort(shard_of, kind="stable")
    bounds = np.searchsorted(shard_of[order], np.arange(len(shards) + 1))
    found = np.zeros(n, dtype=bool)
    pieces: list[list[pa.Array]] = [[] for _ in columns.features]
    for s, shard in enumerate(shards):
        rows = order[bounds[s] : bounds[s + 1]]
        position, hit = shard.probe(keys[rows], None if checks is None else checks[rows])
        hit &= valid[rows]
        found[rows] = hit
        for piece, name in zip(pieces, columns.features, strict=True):
            piece.append(shard.features_at(position, hit, name))
    back = pa.array(np.argsort(order))  # rows in shard order -> rows in the batch's order
    return found, [pa.concat_arrays(piece).take(back) for piece in pieces]


def join_customers(reviews: pa.Table, customers, columns: Columns) -> pa.Table:
    """Left-joins customer features onto reviews, row order kept; HAS_CUSTOMER says whether a match was found.

    customers: a CustomerTable, or the shards of one (the i-th holding the keys in hash bucket i of len(shards)).
    """
    shards = [customers] if isinstance(customers, CustomerTable) else list(customers)
    ids = reviews[columns.customer_id]
    keys, checks = id_keys(ids)
    valid = column_numpy(pc.is_valid(ids)) if ids.null_count else np.ones(len(keys), dtype=bool)
    found, features = _lookup(shards, keys, checks, valid, columns)
    joined = reviews
    for name, values in zip(columns.features, features, strict=True):
        joined = joined.append_column(name, values)
    return joined.append_column(HAS_CUSTOMER, pa.array(found))


def _shard_facts(element):
    _, table = element
    return table.facts


@beam.typehints.with_output_types(PARTITION_TABLE)
class _JoinBatch(beam.DoFn):
    """Joins (partition, reviews) pairs to the broadcast shards."""

    def __init__(self, columns: Columns, count: int):
        self._columns, self._count = columns, count

    def start_bundle(self):
        self._tables = None

    def process(self, element, shards):
        if self._tables is None:  # the side input was just decoded: hand back what decoding it freed
            self._tables = shard_list(shards, self._count, self._columns)
            release_unused_memory()
        partition, table = element
        yield partition, join_customers(table, self._tables, self._columns)


def shard_list(shards: Iterable[tuple[int, CustomerTable]], count: int, columns: Columns) -> list[CustomerTable]:
    """The broadcast side input's (shard, table) pairs as a list indexed by shard; a shard without customers (the
    combine emits nothing for it) is an empty table."""
    tables = [CustomerTable.from_parts([], columns)] * count
    for shard, table in shards:
        tables[shard] = table
    return tables


def broadcast_join(reviews, parts, columns: Columns, plan: JoinPlan):
    """(joined reviews, CustomerFacts per shard): the table built once, with a combine per hash shard of `parts`
    ((shard, compact part) pairs), and given to every worker whole as a side input."""
    shards = parts | "CustomerTable" >> beam.CombinePerKey(CustomerTableFn(columns, plan.paths))
    side = beam.pvalue.AsList(shards)
    joined = reviews | "JoinBatch" >> beam.ParDo(_JoinBatch(columns, plan.shards), shards=side)
    return joined, shards | "ShardFacts" >> beam.Map(_shard_facts)
