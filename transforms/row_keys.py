"""Row keys: one int64 naming a row's file and row, the blocks of rows they fall in, and tables split by label."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from transforms.schema import FILE_INDEX, ROW_INDEX

# Row keys are looked up in blocks of this many rows of one file (2^16): a review batch touches one or two blocks.
BLOCK_BITS = 16


def row_keys(file_index, row_index) -> np.ndarray:
    """One int64 per row naming its file and row, for set lookups (2^40 rows per file is plenty)."""
    files = np.asarray(file_index, dtype=np.int64)
    rows = np.asarray(row_index, dtype=np.int64)
    return (files << 40) | rows


def column_numpy(column) -> np.ndarray:
    """An Arrow column (chunked or not) as one numpy array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


def table_row_keys(table: pa.Table) -> np.ndarray:
    return row_keys(column_numpy(table[FILE_INDEX]), column_numpy(table[ROW_INDEX]))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique(values) for a 1-d integer array, by a sort and a mask. numpy 2.4's np.unique takes ~100x as long
    (measured on 1M int64 hashes: 906 ms against 9 ms, /tmp-style micro-benchmark in benchmarks/README.md)."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


def row_blocks(keys: np.ndarray) -> np.ndarray:
    """The distinct blocks (file and row // 2^BLOCK_BITS, as one int) that some row keys fall in, ascending."""
    return sorted_unique(keys >> BLOCK_BITS)


def split_by(table: pa.Table, labels: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """(label, rows with that label) for each label present, rows in their original order within a label.

    Each piece is a table of its own, not a slice: pickling a slice of an Arrow table writes its whole buffers, so
    slices sent to a shuffle would carry every other bucket's rows too (measured: 3.5 GB instead of 1 GB).
    """
    if table.num_rows == 0:
        return
    small = len(labels) and labels.min() >= 0 and labels.max() < 2**16
    # A stable sort of uint16 is a radix sort: 262,144 labels of 10 buckets in 1.7-2.2 ms against 6.7 ms as int64.
    order = np.argsort(labels.astype(np.uint16) if small else labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    if len(starts) == 1:
        yield int(sorted_labels[0]), table
        return
    for s, e in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        yield int(sorted_labels[s]), table.take(pa.array(order[s:e]))
