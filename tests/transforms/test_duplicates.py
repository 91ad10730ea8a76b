"""Duplicate review ids: found per partition (in hash buckets for large days), looked up per block of rows."""

import numpy as np
import pyarrow as pa
import pytest

from transforms.row_keys import BLOCK_BITS, row_keys
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns
from transforms.validate import _bucket_review_ids, _duplicates_by_block, batch_duplicates, duplicate_row_keys

COLUMNS = Columns()


def _ids(values, file_index, id_type=pa.int64(), first_row=0):
    n = len(values)
    return pa.table(
        {
            "review_id": pa.array(values, id_type),
            "customer_id": pa.array(range(n), pa.int64()),  # the id pass may carry it: it must not matter
            FILE_INDEX: pa.array([file_index] * n, pa.int32()),
            ROW_INDEX: pa.array(range(first_row, first_row + n), pa.int64()),
        }
    )


def _find(batches, buckets):
    """FindDuplicateReviews' steps as the pipeline runs them: bucket, group, find, key by block."""
    groups: dict = {}
    for batch in batches:
        for key, part in _bucket_review_ids(("2026-11-28", batch), COLUMNS, {"2026-11-28": buckets}):
            groups.setdefault(key, []).append(part)
    by_block: dict = {}
    for key, tables in groups.items():
        for block, keys in _duplicates_by_block((key, tables), COLUMNS):
            by_block.setdefault(block, []).append(keys)
    return groups, by_block


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_a_day_that_landed_twice_finds_every_second_copy_in_any_number_of_buckets(id_type):
    rng = np.random.default_rng(2)
    values = rng.permutation(200_000)
    cast = (lambda v: v.tolist()) if id_type == pa.int64() else (lambda v: [f"r{x}" for x in v])
    first = _ids(cast(values), file_index=0, id_type=id_type)
    second = _ids(cast(values), file_index=1, id_type=id_type)  # the same file again, later by path
    expected = np.sort(row_keys(np.ones(200_000), np.arange(200_000)))
    assert duplicate_row_keys([second, first], COLUMNS).tolist() == expected.tolist()
    for buckets in (1, 5):
        groups, by_block = _find([first.slice(0, 70_000), second, first.slice(70_000)], buckets)
        assert len(groups) == buckets
        assert all(t.column_names == ["review_id", FILE_INDEX, ROW_INDEX] for ts in groups.values() for t in ts)
        found = np.sort(np.concatenate([k for keys in by_block.values() for k in keys]))
        assert found.tolist() == expected.tolist()
        assert set(by_block) == set((expected >> BLOCK_BITS).tolist())  # keyed by the blocks of the second copy


def test_a_batch_fetches_only_its_own_blocks_and_is_checked_exactly():
    keys = row_keys([3] * 6, [5, 70_000, 70_001, 140_000, 200_000, 200_001])
    lookup = {}
    for key in keys:
        lookup.setdefault(int(key >> BLOCK_BITS), []).append(np.array([key]))
    batch = _ids(list(range(16_384)), file_index=3, first_row=60_000)  # rows 60,000-76,383: blocks 0 and 1
    touched = []

    class Recording(dict):  # a multimap that records which blocks were asked for
        def __getitem__(self, block):
            touched.append(block)
            return self.get(block, [])

    got = batch_duplicates(batch, Recording(lookup))
    assert got.tolist() == sorted(keys[:3].tolist()) and touched == [3 << 24, (3 << 24) + 1]
    assert batch_duplicates(_ids([1], file_index=4), Recording(lookup)) is None
    assert batch_duplicates(batch.slice(0, 0), Recording(lookup)) is None


def test_null_review_ids_are_never_duplicates():
    batch = _ids([None, None, 7, 7], file_index=0)
    assert duplicate_row_keys([batch], COLUMNS).tolist() == row_keys([0], [3]).tolist()
    _, by_block = _find([batch], buckets=3)
    assert [k for keys in by_block.values() for k in keys[0].tolist()] == row_keys([0], [3]).tolist()
