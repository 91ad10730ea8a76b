"""Joining reviews to customers: matches, misses, duplicates, string-id hashing, and the shuffle join's pieces."""

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import colliding_ids
from transforms.broadcast_join import join_customers, shard_list
from transforms.customer_table import (
    HAS_CUSTOMER,
    KEY,
    CustomerTable,
    CustomerTableFn,
    _slots,
    build_customer_table,
    compact_customers,
    filter_needed,
    is_in_sorted,
)
from transforms.id_hashing import buckets_of, hash_strings, id_keys
from transforms.io import inspect_file
from transforms.join_plan import (
    BUCKET_BYTES,
    MIN_BUCKETS,
    SHARD_BYTES,
    JoinPlan,
    broadcast_shards,
    estimate_table_bytes,
    shuffle_buckets,
)
from transforms.row_keys import sorted_unique, split_by
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns, InputError, RunSchema
from transforms.shuffle_join import attach_answers, join_bucket, review_key_part, sorted_by_row

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


def _reviews(customer_ids, id_type=pa.int64(), file_index=0):
    n = len(customer_ids)
    return pa.table(
        {
            "review_id": list(range(n)),
            "customer_id": pa.array(customer_ids, id_type),
            "review_text": ["t"] * n,
            FILE_INDEX: pa.array([file_index] * n, pa.int32()),
            ROW_INDEX: pa.array(range(n), pa.int64()),
        }
    )


COLLIDING = colliding_ids()


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_match_miss_and_many_reviews_per_customer(id_type):
    cast = (lambda v: v) if id_type == pa.int64() else (lambda v: None if v is None else f"c{v}")
    customers = build_customer_table([_customers([cast(3), cast(1)], [30, 10], id_type=id_type)], COLUMNS)
    joined = join_customers(_reviews([cast(1), cast(2), cast(3), cast(1), None], id_type), customers, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [True, False, True, True, False]
    assert joined["age"].to_pylist() == [10.0, None, 30.0, 10.0, None]
    assert joined["review_id"].to_pylist() == [0, 1, 2, 3, 4]  # row order is kept


def test_duplicate_customer_keeps_first_by_file_then_row_and_counts():
    batch_b = _customers([7, 8], [70.0, 80.0], files=[1, 1], rows=[0, 1])
    batch_a = _customers([7, 7], [71.0, 72.0], files=[0, 0], rows=[5, 2])
    table = build_customer_table([batch_b, batch_a], COLUMNS)
    assert table.facts.duplicate_ids == 2
    assert table.keys.tolist() == [7, 8]
    assert table.features["age"].to_pylist() == [72.0, 80.0]  # file 0 row 2 comes first
    # The order batches arrive in does not change the winner.
    again = build_customer_table([batch_a, batch_b], COLUMNS)
    assert again.features.equals(table.features) and again.keys.tolist() == table.keys.tolist()


def test_the_table_keeps_only_keys_and_features():
    table = build_customer_table([_customers([2, 1], [2.0, 1.0])], COLUMNS)
    assert table.features.column_names == ["age", "purchase_history"]
    assert table.keys.tolist() == [1, 2] and table.checks is None  # integer ids are their own keys
    strings = build_customer_table([_customers(["b", "a"], [2.0, 1.0], id_type=pa.string())], COLUMNS)
    keys, checks = hash_strings(pa.array(["a", "b"]))
    order = np.argsort(keys)
    assert strings.keys.tolist() == keys[order].tolist() and strings.checks.tolist() == checks[order].tolist()
    assert strings.features["age"].to_pylist() == [[1.0, 2.0][i] for i in order]


def test_null_customer_ids_are_dropped_and_counted():
    table = build_customer_table([_customers([None, 1], [1.0, 2.0])], COLUMNS)
    assert table.facts.null_ids == 1 and table.num_rows == 1
    assert table.facts.summary() == {
        "customers_read": 2,
        "customers_unique": 1,
        "duplicate_customer_ids": 0,
        "null_customer_ids": 1,
    }


def test_no_customers_means_every_review_misses():
    empty = build_customer_table([], COLUMNS, RunSchema().customers_schema())
    joined = join_customers(_reviews([1, 2]), empty, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [False, False]
    assert joined["age"].null_count == 2


def test_large_integer_ids_are_exact():
    ids = np.array([2**62, 2**62 + 1], dtype=np.int64)
    customers = build_customer_table([_customers(ids.tolist(), [1.0, 2.0])], COLUMNS)
    joined = join_customers(_reviews([2**62 + 1, 2**62 - 1]), customers, COLUMNS)
    assert joined["age"].to_pylist() == [2.0, None]


def test_string_hashes_depend_on_the_bytes_not_on_the_buffer_layout():
    values = ["", "a", "ab", "ba", "a" * 8, "a" * 8 + "\0", "é" * 9, "customer-000000000001"]
    keys, checks = hash_strings(pa.array(values))
    assert len(set(keys.tolist())) == len(set(checks.tolist())) == len(values)  # length, order, a zero byte count
    # A slice, a chunked array and a large_string array of the same values hash alike.
    for same in (
        pa.array(["x", *values, "y"]).slice(1, len(values)),
        pa.chunked_array([values[:3], values[3:]]),
        pa.array(values, pa.large_string()),
    ):
        again = hash_strings(same)
        assert again[0].tolist() == keys.tolist() and again[1].tolist() == checks.tolist()
    assert hash_strings(pa.array([], pa.string()))[0].dtype == np.int64


def test_many_string_ids_get_distinct_keys():
    keys, _ = hash_strings(pa.array([f"cust-{i:012d}" for i in range(200_000)]))
    assert len(np.unique(keys)) == 200_000


def test_two_string_ids_with_the_same_key_fail_loudly_naming_their_rows():
    a, b = COLLIDING
    (ka, kb), (ca, cb) = hash_strings(pa.array([a, b]))
    assert a != b and ka == kb and ca != cb  # a real collision of the key; the check tells them apart
    batch = _customers([a, "plain", b], [1.0, 2.0, 3.0], files=[4, 4, 4], rows=[7, 8, 9], id_type=pa.string())
    with pytest.raises(InputError, match=r"customer ids at file 4 row 7 and file 4 row 9 differ but have the same"):
        build_customer_table([batch], COLUMNS)
    # The same id twice is a duplicate, not a collision.
    same = build_customer_table([_customers([a, a], [1.0, 2.0], id_type=pa.string())], COLUMNS)
    assert same.num_rows == 1 and same.facts.duplicate_ids == 1


def test_a_review_id_whose_key_matches_another_customer_is_a_miss():
    a, b = COLLIDING
    customers = build_customer_table([_customers([a], [1.0], id_type=pa.string())], COLUMNS)
    joined = join_customers(_reviews([a, b], pa.string()), customers, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [True, False]  # every key match is checked with the second hash
    assert joined["age"].to_pylist() == [1.0, None]


def _batches(id_type, seed=3):
    """Six customer batches (one per file) over 500 ids: many duplicates, one null id per batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, 3000)
    batches = []
    for file_index, chunk in enumerate(np.array_split(ids, 6)):
        values = [int(v) for v in chunk] if id_type == pa.int64() else [f"c{v}" for v in chunk]
        values[0] = None
        ages = rng.normal(40, 10, len(chunk)).tolist()
        batches.append(_customers(values, ages, files=[file_index] * len(chunk), id_type=id_type))
    return batches


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_partial_tables_merge_to_the_one_shot_table_in_any_order(id_type):
    batches = _batches(id_type)
    whole = build_customer_table(batches, COLUMNS)
    assert whole.facts.null_ids == 6 and whole.facts.rows_read == 3000 and whole.facts.duplicate_ids > 1000
    fn = CustomerTableFn(COLUMNS, compact_rows=100)  # compacts after every batch, as a large input would
    partials = []
    for group in (batches[4:], batches[:2], batches[2:4]):
        partial = fn.create_accumulator()
        for batch in reversed(group):
            partial = fn.add_input(partial, compact_customers(batch, COLUMNS)[0])
        partials.append(fn.compact(partial))
    merged = fn.extract_output(fn.merge_accumulators(partials))
    assert merged.keys.tolist() == whole.keys.tolist()
    assert merged.features.equals(whole.features)
    assert merged.facts.unique == whole.num_rows


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_a_table_in_hash_shards_joins_like_the_whole_table(id_type):
    batches = _batches(id_type, seed=4)
    whole = build_customer_table(batches, COLUMNS)
    shards = []
    for shard in range(5):
        parts = []
        for batch in batches:
            part, _ = compact_customers(batch, COLUMNS)
            parts.extend(p for s, p in split_by(part, buckets_of(part[KEY].to_numpy(), 5)) if s == shard)
        shards.append(CustomerTable.from_parts(parts, COLUMNS))
    cast = (lambda v: int(v)) if id_type == pa.int64() else (lambda v: f"c{v}")
    reviews = _reviews([None if i % 13 == 0 else cast(i % 600) for i in range(2000)], id_type)
    assert join_customers(reviews, shards, COLUMNS).equals(join_customers(reviews, whole, COLUMNS))
    assert sum(s.num_rows for s in shards) == whole.num_rows


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_customers_no_review_asks_for_are_kept_as_keys_only(id_type):
    batches = _batches(id_type, seed=6)
    cast = (lambda v: int(v)) if id_type == pa.int64() else (lambda v: f"c{v}")
    reviews = _reviews([cast(v) for v in (3, 3, 17, 499, 600)] + [None], id_type)
    needed = _needed(reviews)
    fn = CustomerTableFn(COLUMNS, compact_rows=100)
    partial = fn.create_accumulator()
    for batch in batches:
        for piece in filter_needed(compact_customers(batch, COLUMNS)[0], needed, COLUMNS):
            partial = fn.add_input(partial, piece)
    filtered, whole = fn.extract_output(partial), build_customer_table(batches, COLUMNS)
    assert filtered.num_rows <= 4 < whole.num_rows
    assert filtered.facts.unique == whole.num_rows  # the summary still counts every customer
    assert join_customers(reviews, filtered, COLUMNS).equals(join_customers(reviews, whole, COLUMNS))
    kept, others = filter_needed(compact_customers(batches[0], COLUMNS)[0], needed, COLUMNS)
    assert others.column_names == [KEY]


def test_a_key_collision_among_customers_no_review_asks_for_counts_once_and_leaves_the_join_alone():
    a, b = COLLIDING
    part, _ = compact_customers(_customers([a, b, "x"], [1.0, 2.0, 3.0], id_type=pa.string()), COLUMNS)
    reviews = _reviews(["x", "y"], pa.string())
    kept, others = filter_needed(part, _needed(reviews), COLUMNS)
    assert kept.num_rows == 1 and others.num_rows == 2
    table = CustomerTable.from_parts([kept, others], COLUMNS)
    assert table.facts.unique == 2  # a and b travel as their key alone: one key, counted once
    joined = join_customers(reviews, table, COLUMNS)
    assert joined[HAS_CUSTOMER].to_pylist() == [True, False] and joined["age"].to_pylist() == [3.0, None]
    # The twin: once a review asks for that key, both rows are kept whole and the collision fails the run.
    kept, others = filter_needed(part, _needed(_reviews(["x", a], pa.string())), COLUMNS)
    with pytest.raises(InputError, match="file 0 row 0 and file 0 row 1 differ but have the same 64-bit hash"):
        CustomerTable.from_parts([kept, others], COLUMNS)


def test_merging_partials_with_a_key_collision_fails_too():
    a, b = COLLIDING
    fn = CustomerTableFn(COLUMNS, paths=["s3://bucket/customers/a.parquet", "s3://bucket/customers/b.parquet"])
    partials = [
        fn.add_input(
            fn.create_accumulator(),
            compact_customers(_customers([x], [1.0], files=[i], id_type=pa.string()), COLUMNS)[0],
        )
        for i, x in enumerate((a, b))
    ]
    with pytest.raises(InputError, match=r"at s3://bucket/customers/a\.parquet row 0 and s3://bucket/customers/b"):
        fn.compact(fn.merge_accumulators(partials))


def _needed(reviews):
    column = reviews["customer_id"].filter(pc.is_valid(reviews["customer_id"]))
    return np.unique(id_keys(column)[0])


def _shuffle_join(batches, reviews, buckets, needed=None):
    """The shuffle join's pure steps, bucket by bucket, as the pipeline runs them."""
    customer_parts: dict[int, list] = {}
    for batch in batches:
        part, _ = compact_customers(batch, COLUMNS)
        for piece in filter_needed(part, needed, COLUMNS) if needed is not None else [part]:
            for bucket, p in split_by(piece, buckets_of(piece[KEY].to_numpy(), buckets)):
                customer_parts.setdefault(bucket, []).append(p)
    review_parts: dict[int, list] = {}
    keys = review_key_part(reviews.select(["customer_id", FILE_INDEX, ROW_INDEX]), COLUMNS)
    for bucket, piece in split_by(keys, buckets_of(keys[KEY].to_numpy(), buckets)):
        review_parts.setdefault(bucket, []).append(piece)
    answers, unique = [], 0
    for bucket in set(customer_parts) | set(review_parts):
        table, n = join_bucket(customer_parts.get(bucket, []), review_parts.get(bucket, []), COLUMNS)
        unique += n
        if table is not None:
            answers.append(table)
    return attach_answers(reviews, [sorted_by_row(answers)] if answers else [], COLUMNS), unique


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_shuffle_join_equals_the_broadcast_join(id_type):
    rng = np.random.default_rng(5)
    cast = (lambda v: int(v)) if id_type == pa.int64() else (lambda v: f"cust-{v}")
    ids = rng.integers(0, 300, 1000)
    batches = [
        _customers(
            [None if i % 97 == 0 else cast(v) for i, v in enumerate(chunk)],
            rng.normal(40, 10, len(chunk)).tolist(),
            files=[f] * len(chunk),
            id_type=id_type,
        )
        for f, chunk in enumerate(np.array_split(ids, 4))
    ]
    wanted = rng.integers(0, 400, 5000)  # ids 300-399 have no customer
    reviews = _reviews([None if i % 50 == 0 else cast(v) for i, v in enumerate(wanted)], id_type, file_index=9)
    broadcast = join_customers(reviews, build_customer_table(batches, COLUMNS), COLUMNS)
    for buckets, needed in ((1, None), (7, None), (7, _needed(reviews.slice(0, 300)))):
        shuffled, unique = _shuffle_join(
            batches, reviews.slice(0, 300) if needed is not None else reviews, buckets, needed
        )
        expected = broadcast.slice(0, 300) if needed is not None else broadcast
        assert shuffled.equals(expected)
        assert unique == build_customer_table(batches, COLUMNS).num_rows  # key-only rows count too
    assert 0 < sum(broadcast[HAS_CUSTOMER].to_pylist()) < reviews.num_rows


def test_a_review_without_an_answer_fails_the_shuffle_join():
    reviews = _reviews([1, 2])
    answers = pa.table(
        {"__row_key": pa.array([0], pa.int64()), HAS_CUSTOMER: [True], "age": [1.0], "purchase_history": [2.0]}
    )
    assert attach_answers(reviews.slice(0, 1), [answers], COLUMNS)["age"].to_pylist() == [1.0]
    with pytest.raises(RuntimeError, match="no answer for the review at file 0, row 1"):
        attach_answers(reviews, [answers], COLUMNS)


def test_the_join_is_broadcast_up_to_the_limit_then_shuffled(tmp_path):
    table = pa.table({"customer_id": np.arange(10_000), "age": np.ones(10_000), "purchase_history": np.ones(10_000)})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=3000)
    info, _ = inspect_file(str(tmp_path / "c.parquet"), 0)
    assert estimate_table_bytes([info, info], COLUMNS, string_ids=False) == 20_000 * 24  # key and two features
    assert estimate_table_bytes([info], COLUMNS, string_ids=True) == 10_000 * 32  # and the check
    plan = JoinPlan.for_files([info], 5000, COLUMNS, string_ids=True, limit_mb=1)
    assert (plan.buckets, plan.shards, plan.paths) == (0, 1, (str(tmp_path / "c.parquet"),))
    assert plan.filter_customers and "broadcast in 1 shard" in plan.describe()
    plan = JoinPlan.for_files([info], 5001, COLUMNS, string_ids=True, limit_mb=0)
    assert plan.buckets == MIN_BUCKETS and not plan.filter_customers  # as many reviews as customers: no filter
    assert shuffle_buckets(100 * BUCKET_BYTES, broadcast_limit_mb=512) == 100
    assert shuffle_buckets(0, broadcast_limit_mb=0) == 0  # no customers: nothing to shuffle
    assert broadcast_shards(200 * SHARD_BYTES + 1) == 201


def test_split_pieces_do_not_carry_the_other_pieces_rows():
    table = pa.table({"k": np.arange(100_000), "v": np.ones(100_000)})
    pieces = dict(split_by(table, np.arange(100_000) % 4))
    assert [p["k"].to_pylist()[:2] for _, p in sorted(pieces.items())] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # A piece pickles (is shuffled) at its own size, not at the whole table's.
    assert all(len(pickle.dumps(p)) < 0.3 * len(pickle.dumps(table)) for p in pieces.values())


def test_the_broadcast_shards_arrive_as_pairs_and_a_shard_may_be_missing():
    batches = _batches(pa.int64(), seed=8)
    parts = [compact_customers(b, COLUMNS)[0] for b in batches]
    by_shard = {}
    for part in parts:
        for shard, piece in split_by(part, buckets_of(part[KEY].to_numpy(), 3)):
            by_shard.setdefault(shard, []).append(piece)
    pairs = [(shard, CustomerTable.from_parts(pieces, COLUMNS)) for shard, pieces in by_shard.items() if shard != 1]
    tables = shard_list(reversed(pairs), 3, COLUMNS)
    assert tables[1].num_rows == 0 and tables[0].num_rows + tables[2].num_rows > 0
    reviews = _reviews([int(k) for k in CustomerTable.from_parts(parts, COLUMNS).keys])
    found = join_customers(reviews, tables, COLUMNS)[HAS_CUSTOMER].to_numpy(zero_copy_only=False)
    keys = reviews["customer_id"].to_numpy()
    assert (found == (buckets_of(keys, 3) != 1)).all()  # the missing shard's customers are misses, the rest found


@pytest.mark.parametrize(
    "keys, members",
    [
        (np.arange(-50_000, 50_000, dtype=np.int64), np.arange(0, 200_000, 7, dtype=np.int64)),  # sequential ids
        (  # 64-bit hashes, as string ids give: a set large enough for a 2^21-slot bitmap
            np.random.default_rng(1).integers(-(2**63), 2**63 - 1, 300_000, dtype=np.int64),
            np.random.default_rng(2).integers(-(2**63), 2**63 - 1, 200_000, dtype=np.int64),
        ),
        (np.array([-(2**63), 2**63 - 1, 0, -1], dtype=np.int64), np.array([-(2**63), -1, 5], dtype=np.int64)),
        (np.arange(10, dtype=np.int64), np.zeros(0, dtype=np.int64)),
        (np.zeros(0, dtype=np.int64), np.arange(10, dtype=np.int64)),
    ],
)
def test_is_in_sorted_answers_like_np_isin(keys, members):
    members = np.unique(members)
    keys = np.concatenate([keys, members[::3]])  # some keys are members, in any order
    np.random.default_rng(3).shuffle(keys)
    assert np.array_equal(is_in_sorted(keys, members), np.isin(keys, members))


def test_a_key_in_a_members_bitmap_slot_but_not_a_member_is_not_in():
    """The bitmap only rules keys out: a key that hashes to a member's slot must still be searched for."""
    members = np.array([12345], dtype=np.int64)
    candidates = np.arange(0, 5_000_000, dtype=np.int64)
    same_slot = candidates[_slots(candidates, 16) == _slots(members, 16)[0]]
    same_slot = same_slot[same_slot != members[0]][:5]
    assert len(same_slot) == 5  # the twin exists: these keys pass the bitmap
    assert not is_in_sorted(same_slot, members).any()
    assert is_in_sorted(np.concatenate([same_slot, members]), members).tolist() == [False] * 5 + [True]


@pytest.mark.parametrize("values", [[], [7], [3, 1, 3, 2, 1], [2**63 - 1, -(2**63), 0, 2**63 - 1]])
def test_sorted_unique_is_np_unique(values):
    values = np.array(values, dtype=np.int64)
    assert np.array_equal(sorted_unique(values), np.unique(values))
    many = np.random.default_rng(4).integers(0, 1000, 50_000)
    assert np.array_equal(sorted_unique(many), np.unique(many))
