"""Joining reviews to their customer's record on customer_id: the composite that runs the planned join."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow.compute as pc

from transforms.broadcast_join import broadcast_join
from transforms.customer_table import KEY, CustomerFacts, compact_customers, filter_needed
from transforms.id_hashing import buckets_of, id_keys
from transforms.join_plan import JoinPlan
from transforms.row_keys import column_numpy, sorted_unique, split_by
from transforms.schema import Columns
from transforms.shuffle_join import shuffle_join


class _BucketCustomers(beam.DoFn):
    """Customer batches → (bucket, compact part) pairs, whole for the customers some review asks for (all of them
    without `needed`) and key-only for the others; the batch's row counts on the FACTS output."""

    FACTS = "facts"

    def __init__(self, columns: Columns, buckets: int):
        self._columns, self._buckets = columns, buckets

    def process(self, batch, needed=None):
        part, null_ids = compact_customers(batch, self._columns)
        yield beam.pvalue.TaggedOutput(self.FACTS, CustomerFacts(batch.num_rows, null_ids, 0))
        for piece in filter_needed(part, needed, self._columns) if needed is not None else (part,):
            yield from split_by(piece, buckets_of(column_numpy(piece[KEY]), self._buckets))


class _KeySetFn(beam.CombineFn):
    """The sorted distinct customer keys that some reviews ask for, from (partition, id table) pairs."""

    def __init__(self, column: str):
        self._column = column

    def create_accumulator(self):
        return []

    def add_input(self, keys, element):
        _, ids = element
        column = ids[self._column]
        if column.null_count:
            column = column.filter(pc.is_valid(column))
        keys.append(sorted_unique(id_keys(column)[0]))
        return self.compact(keys) if len(keys) > 64 else keys

    def merge_accumulators(self, accumulators):
        return self.compact([k for keys in accumulators for k in keys])

    def compact(self, keys):
        return [sorted_unique(np.concatenate(keys))] if len(keys) > 1 else keys

    def extract_output(self, keys):
        return self.compact(keys)[0] if keys else np.zeros(0, dtype=np.int64)


class _SumFacts(beam.CombineFn):
    def create_accumulator(self):
        return CustomerFacts()

    def add_input(self, total, facts):
        return total + facts

    def merge_accumulators(self, totals):
        return sum(totals, CustomerFacts())

    def extract_output(self, total):
        return total


class JoinCustomers(beam.PTransform):
    """Joins (partition, reviews) pairs to their customers' records; returns {"joined", "customers"}.

    customer_batches: customer tables as ReadParquetBatches reads them. Broadcast (plan.buckets == 0): the customer
    table is built once, with a combine per hash shard, and every worker gets all the shards as a side input.
    Shuffle: a keyed shuffle join in plan.buckets hash buckets, for tables too large to broadcast; review_keys,
    (partition, table) pairs with customer_id, FILE_INDEX and ROW_INDEX, is what it shuffles of the reviews (and,
    with plan.filter_customers, where the keys the reviews ask for come from). Either way the joined rows are the
    same, and "customers" is one CustomerFacts for the run's summary.
    """

    def __init__(self, customer_batches, review_keys, columns: Columns, plan: JoinPlan):
        super().__init__()
        self._customer_batches = customer_batches
        self._review_keys = review_keys
        self._columns = columns
        self._plan = plan

    def expand(self, reviews):
        c, plan = self._columns, self._plan
        needed = {}
        if plan.filter_customers:
            keys = self._review_keys | "NeededCustomers" >> beam.CombineGlobally(_KeySetFn(c.customer_id))
            needed = {"needed": beam.pvalue.AsSingleton(keys)}
        customers = self._customer_batches | "BucketCustomers" >> beam.ParDo(
            _BucketCustomers(c, plan.buckets or plan.shards), **needed
        ).with_outputs(_BucketCustomers.FACTS, main="parts")
        if plan.buckets:
            joined, unique = shuffle_join(reviews, customers.parts, self._review_keys, c, plan)
        else:
            joined, unique = broadcast_join(reviews, customers.parts, c, plan)
        facts = (customers[_BucketCustomers.FACTS], unique) | "CollectFacts" >> beam.Flatten()
        return {"joined": joined, "customers": facts | "CustomerFacts" >> beam.CombineGlobally(_SumFacts())}
