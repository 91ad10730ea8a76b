"""Join planning: broadcast or shuffle, decided at start-up from the customer table's size in the footers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from transforms.io import InputFile
from transforms.schema import Columns

# The broadcast table travels as hash shards of about this size: Beam moves a few large elements much more slowly
# than many moderate ones (measured with FnApiRunner: one 270 MB element 15.9 s, 16 of 17 MB 6.0 s).
SHARD_BYTES = 16 * 2**20
# The shuffle join's hash buckets hold about this many bytes of customer table each (and at least MIN_BUCKETS).
BUCKET_BYTES = 64 * 2**20
MIN_BUCKETS = 4


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
