"""The cost of flushing a partition's files to disk before its manifest: a 1M-review night's publish, with and
without the fsyncs, alternated (python -m benchmarks.publish_fsync)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.publish import parquet as publish
from pipeline.publish.publisher import PartitionFacts, RowCounts
from transforms.io import Shard


def _stage(folder: str, run: str, rows: int, shards: int) -> list[dict]:
    """Score shards like a 1M-review night's (ids, customers, float32 scores, the model version), zstd."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    staged = []
    per = rows // shards
    for i in range(shards):
        table = pa.table(
            {
                "review_id": pa.array(np.arange(i * per, (i + 1) * per, dtype=np.int64)),
                "customer_id": pa.array(rng.integers(0, 333_000, per, dtype=np.int64)),
                "sentiment_score": pa.array(rng.random(per, dtype=np.float32)),
                "model_version": pa.array(["0123456789abcdef"] * per),
            }
        )
        path = os.path.join(folder, f"scores-{run}-{i:04d}.parquet")
        pq.write_table(table, path, compression="zstd")
        staged.append(Shard("scores", path, per))
    empty = os.path.join(folder, f"rejects-{run}-empty.parquet")
    pq.write_table(pa.table({"review_id": pa.array([], pa.int64())}), empty)
    staged.append(Shard("rejects", empty, 0))
    return staged


def _publish_once(root: str, run: str, rows: int, shards: int, sync: bool) -> float:
    staged = _stage(os.path.join(root, "staging", run), run, rows, shards)
    os.sync()  # the shards' own write-back is not what is measured
    facts = PartitionFacts(run, "m", RowCounts(rows, rows, 0), partition="2026-11-28")
    real_sync = storage.sync_to_disk
    if not sync:
        storage.sync_to_disk = lambda paths, folders: None
    try:
        started = time.perf_counter()
        publish.publish_partition(staged, os.path.join(root, "out", "dt=2026-11-28"), facts, {"summary.json": b"{}"})
        return time.perf_counter() - started
    finally:
        storage.sync_to_disk = real_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="publish-fsync-")
    times = {True: [], False: []}
    try:
        for i in range(args.repeat):
            for sync in (True, False) if i % 2 == 0 else (False, True):
                times[sync].append(_publish_once(root, f"r{i}-{int(sync)}", args.rows, args.shards, sync))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with_sync, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"publish of {args.rows} rows in {args.shards} shards, median of {args.repeat}, alternated:")
    print(f"  with fsync    {with_sync * 1000:8.1f} ms  {sorted(round(t * 1000, 1) for t in times[True])}")
    print(f"  without fsync {without * 1000:8.1f} ms  {sorted(round(t * 1000, 1) for t in times[False])}")
    print(f"  ratio {with_sync / without:.2f} x, +{(with_sync - without) * 1000:.1f} ms per partition")


if __name__ == "__main__":
    main()
