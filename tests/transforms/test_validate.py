"""Row checks: each problem becomes exactly one reject with its reason; valid rows pass untouched."""

import numpy as np
import pyarrow as pa

from transforms.customer_table import HAS_CUSTOMER
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns, RunSchema
from transforms.validate import check_rows, duplicate_row_keys, row_keys

SCHEMA = RunSchema()


def _joined(rows, text_type=pa.string()):
    cols = list(zip(*rows))
    n = len(rows)
    return pa.table(
        {
            "review_id": pa.array(cols[0], pa.int64()),
            "customer_id": pa.array(cols[1], pa.int64()),
            "review_text": pa.array(cols[2], text_type),
            FILE_INDEX: pa.array([0] * n, pa.int32()),
            ROW_INDEX: pa.array(range(n), pa.int64()),
            "age": pa.array(cols[3], pa.float64()),
            "purchase_history": pa.array(cols[4], pa.float64()),
            HAS_CUSTOMER: pa.array(cols[5]),
        }
    )


def test_each_problem_gets_its_reason_and_good_rows_pass():
    joined = _joined(
        [
            (1, 10, "fine text", 30.0, 5.0, True),
            (None, 10, "x", 30.0, 5.0, True),
            (3, None, "x", 30.0, 5.0, False),
            (4, 99, "x", None, None, False),
            (5, 10, None, 30.0, 5.0, True),
            (6, 10, "  \t ", 30.0, 5.0, True),
            (7, 10, "x", None, 5.0, True),
            (8, 10, "x", float("nan"), 5.0, True),
            (9, 10, "x", 30.0, float("inf"), True),
            (10, 10, "", 30.0, -float("inf"), True),
        ]
    )
    valid, rejects = check_rows(joined, SCHEMA)
    assert valid["review_id"].to_pylist() == [1]
    reasons = dict(zip(rejects["review_id"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons == {
        None: "null_review_id",
        3: "null_customer_id",
        4: "missing_customer",
        5: "null_text",
        6: "empty_text",
        7: "null_feature",
        8: "non_finite_feature",
        9: "non_finite_feature",
        10: "empty_text",
    }
    assert valid.num_rows + rejects.num_rows == joined.num_rows
    assert all(rejects["detail"].to_pylist())
    assert rejects.schema == SCHEMA.rejects_schema()


def test_all_valid_rows_give_an_empty_rejects_table():
    valid, rejects = check_rows(_joined([(1, 10, "ok", 1.0, 2.0, True)]), SCHEMA)
    assert valid.num_rows == 1 and rejects.num_rows == 0
    assert HAS_CUSTOMER not in valid.column_names


def test_invalid_utf8_in_binary_text_is_rejected_and_valid_bytes_become_strings():
    joined = _joined([(1, 10, b"ok", 1.0, 2.0, True), (2, 10, b"\xff\xfe bad", 1.0, 2.0, True)], text_type=pa.binary())
    valid, rejects = check_rows(joined, RunSchema(text_kind="binary"))
    assert rejects["reason"].to_pylist() == ["invalid_utf8"]
    assert valid["review_text"].type == pa.string() and valid["review_text"].to_pylist() == ["ok"]


def test_duplicates_keep_the_first_by_file_then_row():
    ids = pa.table(
        {
            "review_id": [5, 6, 5, 5],
            FILE_INDEX: pa.array([1, 0, 0, 1], pa.int32()),
            ROW_INDEX: pa.array([0, 3, 9, 4], pa.int64()),
        }
    )
    keys = duplicate_row_keys([ids.slice(0, 2), ids.slice(2)], Columns())
    # review 5 appears at (0,9), (1,0), (1,4): the first, (0,9), is kept.
    assert keys.tolist() == sorted(row_keys([1, 1], [0, 4]).tolist())
    joined = _joined([(5, 10, "a", 1.0, 1.0, True), (5, 10, "b", 1.0, 1.0, True)])
    joined = joined.set_column(joined.schema.get_field_index(ROW_INDEX), ROW_INDEX, pa.array([9, 0], pa.int64()))
    joined = joined.set_column(joined.schema.get_field_index(FILE_INDEX), FILE_INDEX, pa.array([0, 1], pa.int32()))
    valid, rejects = check_rows(joined, SCHEMA, keys)
    assert valid["review_text"].to_pylist() == ["a"]
    assert rejects["reason"].to_pylist() == ["duplicate_review_id"]


def test_no_duplicates_gives_no_keys():
    ids = pa.table(
        {
            "review_id": [1, 2, None, None],
            FILE_INDEX: pa.array([0] * 4, pa.int32()),
            ROW_INDEX: pa.array(range(4), pa.int64()),
        }
    )
    assert duplicate_row_keys([ids], Columns()).tolist() == []
    assert duplicate_row_keys([], Columns()).dtype == np.int64
