"""Joining reviews to their customer's record on customer_id: a compact customer table, broadcast or hash-shuffled."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.io import InputFile
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns, InputError

HAS_CUSTOMER = "__has_customer"
# Columns of the compact customer parts, of the shuffle join's review keys and of its answers.
KEY = "__customer_key"  # int64: the id itself (integer ids) or its 64-bit hash (string ids)
CHECK = "__customer_check"  # string ids only: a second, independent 64-bit hash, checked on every key match
ROW_KEY = "__row_key"  # where a row came from, as row_keys() packs it: decides which duplicate wins

# Row keys are looked up in blocks of this many rows of one file (2^16): a review batch touches one or two blocks.
BLOCK_BITS = 16
# The broadcast table travels as hash shards of about this size: Beam moves a few large elements much more slowly
# than many moderate ones (measured with FnApiRunner: one 270 MB element 15.9 s, 16 of 17 MB 6.0 s).
SHARD_BYTES = 16 * 2**20
# The shuffle join's hash buckets hold about this many bytes of customer table each (and at least MIN_BUCKETS).
BUCKET_BYTES = 64 * 2**20
MIN_BUCKETS = 4
# A partial table is de-duplicated once this many rows have arrived since it last was, and at least as many as it
# holds (so the sorting stays amortized), bounding memory when customer files repeat each other.
COMPACT_ROWS = 4_000_000

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: nothing to trim
    _LIBC = None

_U64 = np.uint64
_KEY_MULTIPLIER = _U64(0x9E3779B97F4A7C15)  # odd: h -> h * M is a bijection mod 2^64
_CHECK_MULTIPLIER = _U64(0xBF58476D1CE4E5B9)
_KEY_SALT, _CHECK_SALT = _U64(0xD6E8FEB86659FD93), _U64(0xA0761D6478BD642F)
_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)


def row_keys(file_index, row_index) -> np.ndarray:
    """One int64 per row naming its file and row, for set lookups (2^40 rows per file is plenty)."""
    files = np.asarray(file_index, dtype=np.int64)
    rows = np.asarray(row_index, dtype=np.int64)
    return (files << 40) | rows


def _numpy(column) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


def table_row_keys(table: pa.Table) -> np.ndarray:
    return row_keys(_numpy(table[FILE_INDEX]), _numpy(table[ROW_INDEX]))


def _mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output."""
    h = values.astype(np.uint64, copy=True)
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def hash_strings(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes (int64) of each string's UTF-8 bytes, computed on Arrow's buffers 8 bytes at a
    time: the key, a polynomial over the little-endian words (Horner's rule mod 2^64), and the check, an
    xor-multiply chain over the same words; each salted with the length and mixed.

    Deterministic across processes and machines, so every worker buckets and looks up alike. Nulls hash like the
    empty string: callers mask them.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    buffers = values.buffers()
    wide = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)[values.offset : values.offset + n + 1]
    offsets = offsets.astype(np.int64)
    low, high = int(offsets[0]), int(offsets[-1])
    data = np.zeros(high - low + 8, dtype=np.uint8)  # 8 zero bytes past the end: every word load stays inside
    if high > low:
        data[: high - low] = np.frombuffer(buffers[2], dtype=np.uint8)[low:high]
    words = np.ndarray((high - low + 1,), dtype="<u8", buffer=data, strides=(1,))  # an 8-byte word at every byte
    start = offsets[:-1] - low
    lengths = offsets[1:] - offsets[:-1]
    key = lengths.astype(np.uint64) * _KEY_SALT
    check = lengths.astype(np.uint64) * _CHECK_SALT
    # One pass per word position; strings drop out as they end (so the passes add up to the number of words).
    active: np.ndarray | None = None
    j = 0
    while True:
        if active is None and bool((lengths > 8 * j).all()):
            word = words[start + 8 * j] & _WORD_MASKS[np.minimum(lengths - 8 * j, 8)]
            key = key * _KEY_MULTIPLIER + word
            check = (check ^ word) * _CHECK_MULTIPLIER
            check ^= check >> _U64(31)
            j += 1
            continue
        active = np.flatnonzero(lengths > 8 * j) if active is None else active[lengths[active] > 8 * j]
        if not len(active):
            break
        word = words[start[active] + 8 * j] & _WORD_MASKS[np.minimum(lengths[active] - 8 * j, 8)]
        key[active] = key[active] * _KEY_MULTIPLIER + word
        mixed = (check[active] ^ word) * _CHECK_MULTIPLIER
        check[active] = mixed ^ (mixed >> _U64(31))
        j += 1
    return _mix64(key).view(np.int64), _mix64(check).view(np.int64)


def id_keys(ids: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """(key, check) of each customer id: the id itself and no check for integers, the two hashes for strings.
    Null ids get junk keys: callers mask them."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), None
    return hash_strings(ids)


def buckets_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """The hash bucket (0..buckets-1) of each key."""
    if buckets == 1:
        return np.zeros(len(keys), dtype=np.int64)
    return (_mix64(keys.view(np.uint64)) % _U64(buckets)).astype(np.int64)


def split_by(table: pa.Table, labels: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """(label, rows with that label) for each label present, rows in their original order within a label.

    Each piece is a table of its own, not a slice: pickling a slice of an Arrow table writes its whole buffers, so
    slices sent to a shuffle would carry every other bucket's rows too (measured: 3.5 GB instead of 1 GB).
    """
    if table.num_rows == 0:
        return
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    if len(starts) == 1:
        yield int(sorted_labels[0]), table
        return
    for s, e in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        yield int(sorted_labels[s]), table.take(pa.array(order[s:e]))


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


def filter_needed(part: pa.Table, needed: np.ndarray, columns: Columns) -> tuple[pa.Table, pa.Table]:
    """A compact part split into the rows whose key is in `needed` (sorted keys some review asks for), kept whole,
    and the others, kept only as far as the summary needs them: the key, and for string ids the check and row (to
    find and name hash collisions). Whole files of customers nobody reviewed then shuffle 8-24 bytes a row."""
    keys = _numpy(part[KEY])
    if len(needed):
        at = np.searchsorted(needed, keys).clip(0, len(needed) - 1)
        wanted = needed[at] == keys
    else:
        wanted = np.zeros(len(keys), dtype=bool)
    kept = [KEY, CHECK, ROW_KEY] if CHECK in part.column_names else [KEY]
    return part.filter(pa.array(wanted)), part.select(kept).filter(pa.array(~wanted))


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
    keys = _numpy(table[KEY])
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
    rows = _numpy(table[ROW_KEY])[order]
    if CHECK in table.column_names:
        checks = _numpy(table[CHECK])[order]
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
        checks = _numpy(unique[CHECK]) if CHECK in unique.column_names else None
        features = unique.select(list(columns.features)).combine_chunks()
        return cls(_numpy(unique[KEY]), checks, features, CustomerFacts(0, 0, unique.num_rows + others))

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
    valid = _numpy(pc.is_valid(ids)) if ids.null_count else np.ones(len(keys), dtype=bool)
    found, features = _lookup(shards, keys, checks, valid, columns)
    joined = reviews
    for name, values in zip(columns.features, features, strict=True):
        joined = joined.append_column(name, values)
    return joined.append_column(HAS_CUSTOMER, pa.array(found))


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


# Sizing: both ways of joining start from the size the customer table will have, estimated from the footers.


def estimate_table_bytes(files: Sequence[InputFile], columns: Columns, string_ids: bool) -> int:
    """The size of the CustomerTable of these files, from their footers: an int64 key and float64 features per
    row, and a second int64 (the check) for string ids. Duplicates and null ids would only make it smaller."""
    rows = sum(f.num_rows for f in files)
    return rows * 8 * (1 + len(columns.features) + (1 if string_ids else 0))


def shuffle_buckets(table_bytes: int, broadcast_limit_mb: float) -> int:
    """0 (broadcast the table) when it fits the limit; otherwise how many hash buckets the shuffle join uses."""
    if table_bytes <= broadcast_limit_mb * 2**20:
        return 0
    return max(MIN_BUCKETS, math.ceil(table_bytes / BUCKET_BYTES))


def broadcast_shards(table_bytes: int) -> int:
    return max(1, math.ceil(table_bytes / SHARD_BYTES))


@dataclass(frozen=True)
class JoinPlan:
    """How the join will run, decided at start-up from the customer table's size estimated from the footers."""

    table_bytes: int
    limit_mb: int
    buckets: int  # 0: broadcast
    shards: int  # broadcast only: the table travels as this many hash shards
    paths: tuple[str, ...]  # the customer files by index, to name rows in errors
    # Keep whole only the customers that the run's reviews ask for (the others only count towards the summary):
    # when there are at most half as many review rows as customer rows, as in a nightly run.
    filter_customers: bool = False

    @classmethod
    def for_files(
        cls, files: Sequence[InputFile], review_rows: int, columns: Columns, string_ids: bool, limit_mb: int
    ) -> JoinPlan:
        size = estimate_table_bytes(files, columns, string_ids)
        buckets = shuffle_buckets(size, limit_mb)
        shards = 0 if buckets else broadcast_shards(size)
        selective = 2 * review_rows <= sum(f.num_rows for f in files)
        return cls(size, limit_mb, buckets, shards, tuple(f.path for f in files), selective)

    def describe(self) -> str:
        how = f"a shuffle join in {self.buckets} buckets" if self.buckets else f"broadcast in {self.shards} shard(s)"
        kept = ", keeping whole only the customers the reviews ask for" if self.filter_customers else ""
        return f"customer table of about {self.table_bytes / 2**20:.0f} MiB (limit {self.limit_mb} MiB): {how}{kept}"


# The keyed shuffle join: customers and the reviews' (key, row) pairs meet in hash buckets; each bucket
# de-duplicates its customers exactly like the broadcast table and answers its reviews; the answers come back to
# the review batches by row key, through a side input keyed by block (a worker fetches only the blocks it reads).


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
    checks = _numpy(keys[CHECK]) if CHECK in keys.column_names else None
    position, found = table.probe(_numpy(keys[KEY]), checks)
    answers = {ROW_KEY: keys[ROW_KEY], HAS_CUSTOMER: pa.array(found)}
    answers.update((name, table.features_at(position, found, name)) for name in columns.features)
    return pa.table(answers), table.facts.unique


def sorted_by_row(parts: Iterable[pa.Table]) -> pa.Table:
    parts = list(parts)
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return table.take(pa.array(np.argsort(_numpy(table[ROW_KEY]), kind="stable")))


def attach_answers(reviews: pa.Table, answers: Sequence[pa.Table], columns: Columns) -> pa.Table:
    """The shuffle join's answers for these reviews (looked up by row key) appended like join_customers does.

    Every review with a customer id must have an answer: a missing one means the id pass and the read disagree,
    which fails the run instead of turning the review into a missing_customer reject.
    """
    keys = table_row_keys(reviews)
    n = len(keys)
    ids = reviews[columns.customer_id]
    has_id = _numpy(pc.is_valid(ids)) if ids.null_count else np.ones(n, dtype=bool)
    table = pa.concat_tables(answers) if len(answers) > 1 else (answers[0] if answers else None)
    if table is None or table.num_rows == 0:
        position, present = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    else:
        answer_keys = _numpy(table[ROW_KEY])
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
    found = present & _numpy(table[HAS_CUSTOMER])[position]
    take = pa.array(position, mask=~found)
    for name in columns.features:
        joined = joined.append_column(name, table[name].take(take).combine_chunks())
    return joined.append_column(HAS_CUSTOMER, pa.array(found))


def row_blocks(keys: np.ndarray) -> np.ndarray:
    """The distinct blocks (file and row // 2^BLOCK_BITS, as one int) that some row keys fall in, ascending."""
    return np.unique(keys >> BLOCK_BITS)


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
            yield from split_by(piece, buckets_of(_numpy(piece[KEY]), self._buckets))


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
        keys.append(np.unique(id_keys(column)[0]))
        return self.compact(keys) if len(keys) > 64 else keys

    def merge_accumulators(self, accumulators):
        return self.compact([k for keys in accumulators for k in keys])

    def compact(self, keys):
        return [np.unique(np.concatenate(keys))] if len(keys) > 1 else keys

    def extract_output(self, keys):
        return self.compact(keys)[0] if keys else np.zeros(0, dtype=np.int64)


def _bucket_review_keys(element, columns: Columns, buckets: int):
    _, ids = element
    part = review_key_part(ids, columns)
    yield from split_by(part, buckets_of(_numpy(part[KEY]), buckets))


class _JoinBucket(beam.DoFn):
    FACTS = "facts"

    def __init__(self, columns: Columns, paths: Sequence[str]):
        self._columns, self._paths = columns, tuple(paths)

    def process(self, element):
        _, grouped = element
        answers, unique = join_bucket(list(grouped["customers"]), list(grouped["reviews"]), self._columns, self._paths)
        yield beam.pvalue.TaggedOutput(self.FACTS, CustomerFacts(0, 0, unique))
        if answers is not None:
            yield from split_by(answers, _numpy(answers[ROW_KEY]) >> BLOCK_BITS)


class _SumFacts(beam.CombineFn):
    def create_accumulator(self):
        return CustomerFacts()

    def add_input(self, total, facts):
        return total + facts

    def merge_accumulators(self, totals):
        return sum(totals, CustomerFacts())

    def extract_output(self, total):
        return total


def _shard_facts(element):
    _, table = element
    return table.facts


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


def _sorted_block(block, parts):
    return block, sorted_by_row(parts)


def _attach_pair(element, answers, columns):
    partition, table = element
    blocks = row_blocks(table_row_keys(table)) if table.num_rows else []
    return partition, attach_answers(table, [a for b in blocks for a in answers[int(b)]], columns)


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
        self._buckets = plan.buckets
        self._shards = plan.shards
        self._paths = plan.paths
        self._filter = plan.filter_customers

    def expand(self, reviews):
        c = self._columns
        needed = {}
        if self._filter:
            keys = self._review_keys | "NeededCustomers" >> beam.CombineGlobally(_KeySetFn(c.customer_id))
            needed = {"needed": beam.pvalue.AsSingleton(keys)}
        customers = self._customer_batches | "BucketCustomers" >> beam.ParDo(
            _BucketCustomers(c, self._buckets or self._shards), **needed
        ).with_outputs(_BucketCustomers.FACTS, main="parts")
        join = self._shuffle if self._buckets else self._broadcast
        joined, unique = join(reviews, customers.parts)
        facts = (customers[_BucketCustomers.FACTS], unique) | "CollectFacts" >> beam.Flatten()
        return {"joined": joined, "customers": facts | "CustomerFacts" >> beam.CombineGlobally(_SumFacts())}

    def _broadcast(self, reviews, parts):
        c = self._columns
        shards = parts | "CustomerTable" >> beam.CombinePerKey(CustomerTableFn(c, self._paths))
        joined = reviews | "JoinBatch" >> beam.ParDo(_JoinBatch(c, self._shards), shards=beam.pvalue.AsList(shards))
        return joined, shards | "ShardFacts" >> beam.Map(_shard_facts)

    def _shuffle(self, reviews, parts):
        c = self._columns
        review_parts = self._review_keys | "BucketReviewKeys" >> beam.FlatMap(_bucket_review_keys, c, self._buckets)
        answered = (
            {"customers": parts, "reviews": review_parts}
            | "GroupBuckets" >> beam.CoGroupByKey()
            | "JoinBuckets" >> beam.ParDo(_JoinBucket(c, self._paths)).with_outputs(_JoinBucket.FACTS, main="answers")
        )
        answers = (
            answered.answers
            | "GroupAnswersByBlock" >> beam.GroupByKey()
            | "SortAnswers" >> beam.MapTuple(_sorted_block)
        )
        joined = reviews | "AttachAnswers" >> beam.Map(_attach_pair, answers=beam.pvalue.AsMultiMap(answers), columns=c)
        return joined, answered[_JoinBucket.FACTS]
