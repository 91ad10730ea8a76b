"""The customer table: compact customer parts, de-duplicated, probed by binary search, built by a CombineFn."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.id_hashing import id_keys
from transforms.row_keys import column_numpy, table_row_keys
from transforms.schema import Columns, InputError

# The column the join appends to reviews: whether the review's customer was found.
HAS_CUSTOMER = "__has_customer"
# Columns of the compact customer parts, of the shuffle join's review keys and of its answers.
KEY = "__customer_key"  # int64: the id itself (integer ids) or its 64-bit hash (string ids)
CHECK = "__customer_check"  # string ids only: a second, independent 64-bit hash, checked on every key match
ROW_KEY = "__row_key"  # where a row came from, as row_keys() packs it: decides which duplicate wins

# A partial table is de-duplicated once this many rows have arrived since it last was, and at least as many as it
# holds (so the sorting stays amortized), bounding memory when customer files repeat each other.
COMPACT_ROWS = 4_000_000

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: nothing to trim
    _LIBC = None


def compact_customers(batch: pa.Table, columns: Columns) -> tuple[pa.Table, int]:
    """A customer batch as a compact part (KEY, [CHECK], ROW_KEY, features) without its null ids; and how many
    null ids it dropped."""
    ids = batch[columns.customer_id]
    null_ids = ids.null_count
    if null_ids:
        batch = batch.filter(pc.is_valid(ids))
    keys, checks = id_keys(batch[columns.customer_id])
    part = {KEY: pa.array(keys)}
    if checks is not None:
        part[CHECK] = pa.array(checks)
    part[ROW_KEY] = pa.array(table_row_keys(batch))
    for name in columns.features:
        part[name] = batch[name].combine_chunks()
    return pa.table(part), int(null_ids)


# is_in_sorted's prefilter: one bool per slot, about 8 slots per key of the set (so ~12 % of the keys not in the set
# pass it), 2^16 to 2^26 slots.
_SLOTS_PER_KEY_BITS = 3
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


def _slots(keys: np.ndarray, bits: int) -> np.ndarray:
    return (keys.view(np.uint64) * _FIBONACCI) >> np.uint64(64 - bits)  # multiplicative hashing: the top bits


def is_in_sorted(keys: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Whether each int64 key is in `members` (sorted, distinct). A binary search of every key costs a cache miss
    per step on a large set; a bitmap of the members' hash slots first rules most keys out, and only the rest are
    searched. Measured on 5M random keys against 850k members: 1268 ms (searchsorted of every key) and 514 ms
    (pyarrow is_in) against 365 ms."""
    wanted = np.zeros(len(keys), dtype=bool)
    if not len(members) or not len(keys):
        return wanted
    bits = int(np.clip(int(len(members)).bit_length() + _SLOTS_PER_KEY_BITS, 16, 26))
    occupied = np.zeros(1 << bits, dtype=bool)
    occupied[_slots(members, bits)] = True
    candidates = np.flatnonzero(occupied[_slots(keys, bits)])
    if len(candidates):
        some = keys[candidates]
        at = np.searchsorted(members, some).clip(0, len(members) - 1)
        wanted[candidates] = members[at] == some
    return wanted


def filter_needed(part: pa.Table, needed: np.ndarray, columns: Columns) -> tuple[pa.Table, pa.Table]:
    """A compact part split into the rows whose key is in `needed` (sorted keys some review asks for), kept whole,
    and the others, kept only as far as the summary's count of unique customers needs them: the key. Whole files of
    customers nobody reviewed then shuffle 8 bytes a row.

    The others carry no check hash: two different string ids among them with the same 64-bit key count as one
    customer (probability about n^2 / 2^65 for n such ids: 7e-7 at 5M). The join cannot be misled by that, since
    no review asks for either key; customers some review asks for keep their check, and a collision between them
    still fails the run. Measured with 4.1M of 5M string-id customers nobody reviews (1M reviews), 3 runs each
    alternated: 12.46-13.70 s with the key alone against 14.24-14.65 s with key and check, 0.13 GB less; dropping
    the row key first (key, check and row key before) had given 12.5 s against 12.9-13.9 s, 0.16 GB less."""
    keys = column_numpy(part[KEY])
    wanted = is_in_sorted(keys, needed)
    return part.filter(pa.array(wanted)), pa.table({KEY: keys[~wanted]})


def _by_kind(parts: Iterable[pa.Table], columns: Columns) -> tuple[list[pa.Table], list[pa.Table]]:
    """(parts with features, key-only parts), empty ones dropped."""
    whole, key_only = [], []
    for part in parts:
        if part.num_rows:
            (whole if columns.features[0] in part.column_names else key_only).append(part)
    return whole, key_only


def _where(row_key: int, paths: Sequence[str]) -> str:
    file, row = row_key >> 40, row_key & (2**40 - 1)
    return f"{paths[file] if file < len(paths) else f'file {file}'} row {row}"


def deduplicate(parts: Sequence[pa.Table], paths: Sequence[str] = ()) -> pa.Table:
    """One row per key, sorted by key: the row with the smallest ROW_KEY (first by file, then row) wins. All parts
    must be of one kind (with features, or key-only).

    Two string ids with the same key but different checks cannot be told apart by the join: that fails here,
    naming both rows (paths: the customer files by index), rather than joining reviews to the wrong customer.
    """
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    keys = column_numpy(table[KEY])
    if len(parts) == 1 and bool((keys[1:] > keys[:-1]).all()):
        return table  # already sorted and unique: a compacted partial table
    order = np.argsort(keys)
    sorted_keys = keys[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    if first.all():
        return table.take(pa.array(order))
    if ROW_KEY not in table.column_names:  # integer keys only: any row of a key stands for it
        return table.take(pa.array(order[first]))
    repeated = np.flatnonzero(~first)
    rows = column_numpy(table[ROW_KEY])[order]
    if CHECK in table.column_names:
        checks = column_numpy(table[CHECK])[order]
        differ = repeated[checks[repeated] != checks[repeated - 1]]
        if len(differ):
            i = differ[0]
            one, other = sorted((int(rows[i - 1]), int(rows[i])))
            raise InputError(
                f"customer ids at {_where(one, paths)} and {_where(other, paths)} differ but "
                f"have the same 64-bit hash {int(sorted_keys[i]) & (2**64 - 1):#018x}: the join cannot tell them apart"
            )
    starts = np.flatnonzero(first)
    smallest = np.minimum.reduceat(rows, starts)
    winners = rows == np.repeat(smallest, np.diff(np.r_[starts, len(rows)]))
    return table.take(pa.array(order[winners]))


@dataclass(frozen=True)
class CustomerFacts:
    """The customer-table counts a run reports in summary.json, the same whichever way the join ran."""

    rows_read: int = 0
    null_ids: int = 0
    unique: int = 0

    @property
    def duplicate_ids(self) -> int:
        return self.rows_read - self.null_ids - self.unique

    def __add__(self, other: CustomerFacts) -> CustomerFacts:
        return CustomerFacts(
            self.rows_read + other.rows_read, self.null_ids + other.null_ids, self.unique + other.unique
        )

    def summary(self) -> dict:
        return {
            "customers_read": self.rows_read,
            "customers_unique": self.unique,
            "duplicate_customer_ids": self.duplicate_ids,
            "null_customer_ids": self.null_ids,
        }


@dataclass(frozen=True)
class CustomerTable:
    """Customers with unique, non-null ids: sorted int64 keys, their checks (string ids), and their features;
    nothing else (no file, row or id columns). Duplicate ids keep the first row in (file path, row) order, which
    does not depend on how the read was split. Probed by binary search: nothing is rebuilt per batch."""

    keys: np.ndarray
    checks: np.ndarray | None
    features: pa.Table
    facts: CustomerFacts = CustomerFacts()

    @classmethod
    def from_parts(cls, parts: Sequence[pa.Table], columns: Columns, paths: Sequence[str] = ()) -> CustomerTable:
        """The table of some compact parts; key-only parts (filter_needed) only count towards facts.unique.
        rows_read and null_ids are the caller's to add."""
        whole, key_only = _by_kind(parts, columns)
        others = deduplicate(key_only, paths).num_rows
        unique = deduplicate(whole, paths)
        if unique.num_rows == 0:
            features = pa.table({name: pa.array([], pa.float64()) for name in columns.features})
            return cls(np.zeros(0, dtype=np.int64), None, features, CustomerFacts(0, 0, others))
        checks = column_numpy(unique[CHECK]) if CHECK in unique.column_names else None
        features = unique.select(list(columns.features)).combine_chunks()
        return cls(column_numpy(unique[KEY]), checks, features, CustomerFacts(0, 0, unique.num_rows + others))

    @property
    def num_rows(self) -> int:
        return len(self.keys)

    def probe(self, keys: np.ndarray, checks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of each key: found when the key is in the table and (string ids) its check agrees."""
        n = len(keys)
        if self.num_rows == 0 or n == 0:
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        if self.num_rows > 65536 and n > 256:  # sorted probes walk a large table in order: measured 2.5x faster
            order = np.argsort(keys)
            position = np.empty(n, dtype=np.int64)
            position[order] = np.searchsorted(self.keys, keys[order])
        else:
            position = np.searchsorted(self.keys, keys)
        np.minimum(position, self.num_rows - 1, out=position)
        found = self.keys[position] == keys
        if self.checks is not None:
            found &= self.checks[position] == checks
        return position, found

    def features_at(self, position: np.ndarray, found: np.ndarray, name: str) -> pa.Array:
        if self.num_rows == 0:
            return pa.nulls(len(position), pa.float64())
        return self.features[name].take(pa.array(position, mask=~found)).combine_chunks()


def release_unused_memory() -> None:
    """Hands freed memory back to the OS: Arrow's pool and glibc's heap keep what reading and hashing millions of
    customers freed, interleaved with the parts that stay (measured: ~0.4 GB for 5M string ids), and the workers
    then need it for the broadcast table and for scoring."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _Partial:
    """A partial customer table: compact parts, de-duplicated now and then (after compaction: at most one part of
    each kind, whole and key-only)."""

    __slots__ = ("parts", "compacted_rows", "pending_rows")

    def __init__(self):
        self.parts: list[pa.Table] = []
        self.compacted_rows = self.pending_rows = 0

    def __getstate__(self):
        return (self.parts, self.compacted_rows, self.pending_rows)

    def __setstate__(self, state):
        self.parts, self.compacted_rows, self.pending_rows = state


class CustomerTableFn(beam.CombineFn):
    """Builds a CustomerTable from compact parts (compact_customers, filter_needed): each worker keeps a
    de-duplicated partial table of what it read, and the partial tables are merged, instead of every batch being
    gathered onto one worker first. paths: the customer files by index, to name rows in errors."""

    def __init__(self, columns: Columns, paths: Sequence[str] = (), compact_rows: int = COMPACT_ROWS):
        self._columns = columns
        self._paths = tuple(paths)
        self._compact_rows = compact_rows

    def create_accumulator(self) -> _Partial:
        return _Partial()

    def add_input(self, partial: _Partial, part: pa.Table) -> _Partial:
        if part.num_rows:
            partial.parts.append(part)
            partial.pending_rows += part.num_rows
        return self._maybe_compact(partial)

    def _maybe_compact(self, partial: _Partial) -> _Partial:
        if partial.pending_rows >= max(self._compact_rows, partial.compacted_rows):
            self.compact(partial)
        return partial

    def merge_accumulators(self, partials: Iterable[_Partial]) -> _Partial:
        merged = _Partial()
        for p in partials:
            merged.parts.extend(p.parts)
            merged.pending_rows += p.pending_rows + p.compacted_rows
        return self._maybe_compact(merged)

    def compact(self, partial: _Partial) -> _Partial:
        if len(partial.parts) > 2 or partial.pending_rows:
            kinds = _by_kind(partial.parts, self._columns)
            partial.parts = [t for t in (deduplicate(k, self._paths) for k in kinds) if t.num_rows]
            partial.compacted_rows, partial.pending_rows = sum(p.num_rows for p in partial.parts), 0
            release_unused_memory()
        return partial

    def extract_output(self, partial: _Partial) -> CustomerTable:
        table = CustomerTable.from_parts(partial.parts, self._columns, self._paths)
        release_unused_memory()
        return table


def build_customer_table(
    tables: Iterable[pa.Table], columns: Columns, schema: pa.Schema | None = None
) -> CustomerTable:
    """The CustomerTable of some customer batches (each with the id, feature, FILE_INDEX and ROW_INDEX columns), in
    one process: for training and tests; a pipeline builds it with CustomerTableFn."""
    parts, rows_read, null_ids = [], 0, 0
    for table in tables:
        part, nulls = compact_customers(table, columns)
        parts.append(part)
        rows_read += table.num_rows
        null_ids += nulls
    table = CustomerTable.from_parts(parts, columns)
    return CustomerTable(table.keys, table.checks, table.features, CustomerFacts(rows_read, null_ids, table.num_rows))
