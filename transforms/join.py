"""Joining reviews to their customer's record on customer_id, against a broadcast customer table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.schema import FILE_INDEX, ROW_INDEX, Columns

HAS_CUSTOMER = "__has_customer"


@dataclass(frozen=True)
class CustomerTable:
    """Customers with unique, non-null ids sorted ascending; built once and broadcast to every worker.

    Duplicate ids keep the first row in (file path, row) order, which does not depend on how the read was split.
    """

    table: pa.Table
    rows_read: int
    duplicate_ids: int
    null_ids: int

    def summary(self) -> dict:
        return {
            "customers_read": self.rows_read,
            "customers_unique": self.table.num_rows,
            "duplicate_customer_ids": self.duplicate_ids,
            "null_customer_ids": self.null_ids,
        }


def build_customer_table(tables: Iterable[pa.Table], columns: Columns, schema: pa.Schema) -> CustomerTable:
    """Concatenates customer batches, drops null ids and keeps one row per id (the first by file and row)."""
    tables = [t for t in tables if t.num_rows]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    rows_read = table.num_rows
    key = columns.customer_id
    valid = table.filter(pc.is_valid(table[key]))
    null_ids = rows_read - valid.num_rows
    ordered = valid.sort_by([(key, "ascending"), (FILE_INDEX, "ascending"), (ROW_INDEX, "ascending")])
    ids = ordered[key].combine_chunks()
    if len(ids) > 1:
        differs = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
        first = np.concatenate([[True], differs])
    else:
        first = np.ones(len(ids), dtype=bool)
    unique = ordered.filter(pa.array(first)).select(columns.customer_columns()).combine_chunks()
    return CustomerTable(unique, rows_read, int(len(ids) - unique.num_rows), null_ids)


def join_customers(reviews: pa.Table, customers: CustomerTable, columns: Columns) -> pa.Table:
    """Left-joins customer features onto reviews, row order kept; HAS_CUSTOMER says whether a match was found."""
    key = columns.customer_id
    table = customers.table
    review_ids = reviews[key].combine_chunks()
    customer_ids = table[key].combine_chunks()
    if pa.types.is_integer(customer_ids.type) and len(customer_ids):
        # Sorted integer keys: a binary search per review, with no hash table rebuilt per batch.
        sorted_ids = customer_ids.to_numpy()
        lookup = review_ids.fill_null(0).to_numpy(zero_copy_only=False).astype(sorted_ids.dtype, copy=False)
        position = np.searchsorted(sorted_ids, lookup).clip(0, len(sorted_ids) - 1)
        found = (sorted_ids[position] == lookup) & review_ids.is_valid().to_numpy(zero_copy_only=False)
    else:
        index = pc.index_in(review_ids, value_set=customer_ids)
        found = index.is_valid().to_numpy(zero_copy_only=False)
        position = index.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    take = pa.array(position, mask=~found) if len(table) else pa.nulls(len(position), pa.int64())
    joined = reviews
    for name in columns.features:
        values = table[name].take(take) if len(table) else pa.nulls(len(position), pa.float64())
        joined = joined.append_column(name, values)
    return joined.append_column(HAS_CUSTOMER, pa.array(found))


class JoinCustomers(beam.PTransform):
    """Joins (partition, reviews) pairs to a broadcast CustomerTable side input."""

    def __init__(self, customers, columns: Columns):
        super().__init__()
        self._customers = customers
        self._columns = columns

    def expand(self, reviews):
        return reviews | "JoinBatch" >> beam.Map(
            _join_pair, customers=beam.pvalue.AsSingleton(self._customers), columns=self._columns
        )


def _join_pair(element, customers, columns):
    partition, table = element
    return partition, join_customers(table, customers, columns)
