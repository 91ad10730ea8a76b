"""Joining reviews to customers: matches, misses, duplicates and many reviews per customer."""

import numpy as np
import pyarrow as pa
import pytest

from transforms.join import HAS_CUSTOMER, build_customer_table, join_customers
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns, RunSchema

COLUMNS = Columns()


def _customers(ids, ages, files=None, rows=None, id_type=pa.int64()):
    n = len(ids)
    return pa.table(
        {
            "customer_id": pa.array(ids, id_type),
            "age": pa.array(ages, pa.float64()),
            "purchase_history": pa.array([float(a) * 10 if a is not None else None for a in ages], pa.float64()),
            FILE_INDEX: pa.array(files or [0] * n, pa.int32()),
            ROW_INDEX: pa.array(rows or list(range(n)), pa.int64()),
        }
    )


def _reviews(customer_ids, id_type=pa.int64()):
    return pa.table(
        {
            "review_id": list(range(len(customer_ids))),
            "customer_id": pa.array(customer_ids, id_type),
            "review_text": ["t"] * len(customer_ids),
        }
    )


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_match_miss_and_many_reviews_per_customer(id_type):
    cast = (lambda v: v) if id_type == pa.int64() else (lambda v: None if v is None else f"c{v}")
    customers = build_customer_table(
        [_customers([cast(3), cast(1)], [30, 10], id_type=id_type)],
        COLUMNS,
        RunSchema(customer_id_kind="int").customers_schema(),
    )
    joined = join_customers(_reviews([cast(1), cast(2), cast(3), cast(1), None], id_type), customers, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [True, False, True, True, False]
    assert joined["age"].to_pylist() == [10.0, None, 30.0, 10.0, None]
    assert joined["review_id"].to_pylist() == [0, 1, 2, 3, 4]  # row order is kept


def test_duplicate_customer_keeps_first_by_file_then_row_and_counts():
    batch_b = _customers([7, 8], [70.0, 80.0], files=[1, 1], rows=[0, 1])
    batch_a = _customers([7, 7], [71.0, 72.0], files=[0, 0], rows=[5, 2])
    table = build_customer_table([batch_b, batch_a], COLUMNS, batch_a.schema)
    assert table.duplicate_ids == 2
    assert table.table["customer_id"].to_pylist() == [7, 8]
    assert table.table["age"].to_pylist() == [72.0, 80.0]  # file 0 row 2 comes first
    # The order batches arrive in does not change the winner.
    again = build_customer_table([batch_a, batch_b], COLUMNS, batch_a.schema)
    assert again.table.equals(table.table)


def test_null_customer_ids_are_dropped_and_counted():
    table = build_customer_table([_customers([None, 1], [1.0, 2.0])], COLUMNS, RunSchema().customers_schema())
    assert table.null_ids == 1 and table.table.num_rows == 1
    assert table.summary()["customers_read"] == 2


def test_no_customers_means_every_review_misses():
    empty = build_customer_table([], COLUMNS, RunSchema().customers_schema())
    joined = join_customers(_reviews([1, 2]), empty, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [False, False]
    assert joined["age"].null_count == 2


def test_large_integer_ids_are_exact():
    ids = np.array([2**62, 2**62 + 1], dtype=np.int64)
    customers = build_customer_table([_customers(ids.tolist(), [1.0, 2.0])], COLUMNS, RunSchema().customers_schema())
    joined = join_customers(_reviews([2**62 + 1, 2**62 - 1]), customers, COLUMNS)
    assert joined["age"].to_pylist() == [2.0, None]
