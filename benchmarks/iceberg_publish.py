"""The Iceberg publish of one night against the time to write that night's staged shards, on local disk.

    .venv/bin/python -m benchmarks.iceberg_publish                        # 1M scores a night, 4 shards, 3 nights
    .venv/bin/python -m benchmarks.iceberg_publish --rows 20000 --repeat 1   # a smoke test

For each night: the scores (and 1 % as many rejects) are written as the pipeline's writers write them (zstd
Parquet with the `dt` column, --shards files) and timed; then `DayCommit.publish` of those files is timed (move
into the table, one commit per table, orphan cleanup), then a rerun of the same night (the replace path: the day's
old files deleted in the same snapshot), then `verify`. Nights run round-robin --repeat times into one growing
catalog (SQLite at WORK/catalog.db), so later commits see a longer history. Prints each timing, the best of each,
and publish / write as the ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import WORK
from pipeline.publish.iceberg_commit import DayCommit
from pipeline.publish.iceberg_tables import PARTITION_COLUMN, OutputTables
from transforms.io import with_partition_day
from transforms.schema import RunSchema

# The job's own output schemas (integer ids, the default feature columns).
SCORES, REJECTS = RunSchema().scores_schema(), RunSchema().rejects_schema()


def _night(rows: int, rejects: int, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    scores = pa.table(
        [
            pa.array(np.arange(rows, dtype=np.int64)),
            pa.array(rng.integers(0, rows // 10 + 1, rows, dtype=np.int64)),
            pa.array(rng.random(rows, dtype=np.float32)),
            pa.array(np.full(rows, "bench-v1", dtype=object), pa.string()),
        ],
        schema=SCORES,
    )
    ids = pa.array(np.arange(rows, rows + rejects, dtype=np.int64))
    text = pa.array(np.full(rejects, "no customer record for this review", dtype=object), pa.string())
    numbers = pa.array(rng.random(rejects))
    rejected = pa.table([ids, ids, pa.array(["missing_customer"] * rejects), text, text, numbers, numbers], REJECTS)
    return scores, rejected


def _stage(folder: str, run: str, day: str, scores: pa.Table, rejects: pa.Table, shards: int) -> dict:
    """Writes the night as the pipeline's writers do; returns publish()'s arguments."""
    os.makedirs(folder, exist_ok=True)
    files = {"scores": [], "rejects": []}
    per = -(-scores.num_rows // shards)
    for i in range(shards):
        path = os.path.join(folder, f"scores-{run}-{i:05d}-of-{shards:05d}.parquet")
        pq.write_table(with_partition_day(scores.slice(i * per, per), PARTITION_COLUMN, day), path, compression="zstd")
        files["scores"].append(path)
    path = os.path.join(folder, f"rejects-{run}-00000-of-00001.parquet")
    pq.write_table(with_partition_day(rejects, PARTITION_COLUMN, day), path, compression="zstd")
    files["rejects"].append(path)
    read = scores.num_rows + rejects.num_rows
    properties = {
        "run-id": run,
        "model-version": "bench-v1",
        "rows-read": str(read),
        "rows-scored": str(scores.num_rows),
        "rows-rejected": str(rejects.num_rows),
    }
    return {"scores_files": files["scores"], "rejects_files": files["rejects"], "properties": properties}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="scores per night")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the nights (each round republishes them)")
    parser.add_argument("--work", default=os.path.join(WORK, "iceberg-publish"))
    args = parser.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    output = DayCommit(OutputTables(os.path.join(args.work, "out")))
    output.prepare({"scores": SCORES, "rejects": REJECTS})
    scores, rejects = _night(args.rows, max(args.rows // 100, 1), seed=0)
    days = [(datetime.date(2026, 11, 1) + datetime.timedelta(days=n)).isoformat() for n in range(args.nights)]
    timings = {"write": [], "publish": [], "republish": [], "verify": []}
    for round_ in range(args.repeat):
        for day in days:
            run = f"r{round_}-{day}"
            started = time.perf_counter()
            staged = _stage(os.path.join(args.work, "staging", run), run, day, scores, rejects, args.shards)
            timings["write"].append(time.perf_counter() - started)
            started = time.perf_counter()
            output.publish(day, **staged)
            timings["publish"].append(time.perf_counter() - started)
            again = _stage(os.path.join(args.work, "staging", run + "b"), run + "b", day, scores, rejects, args.shards)
            started = time.perf_counter()
            output.publish(day, **again)
            timings["republish"].append(time.perf_counter() - started)
            started = time.perf_counter()
            complete, message = output.tables.verify(day)
            timings["verify"].append(time.perf_counter() - started)
            assert complete, message
            print(
                f"{day} round {round_}: write {timings['write'][-1]:.3f} s, publish {timings['publish'][-1]:.3f} s, "
                f"republish {timings['republish'][-1]:.3f} s, verify {timings['verify'][-1]:.3f} s",
                flush=True,
            )
    best = {name: min(values) for name, values in timings.items()}
    median = {name: statistics.median(values) for name, values in timings.items()}
    snapshots = len(output.catalog.load_table("sentiment.review_scores").metadata.snapshots)
    print(
        f"{args.rows:,} scores + {rejects.num_rows:,} rejects a night in {args.shards} + 1 shards, {args.nights} "
        f"nights x {args.repeat} rounds ({snapshots} snapshots in the scores table at the end)"
    )
    for name in timings:
        print(f"  {name:9s} best {best[name]:.3f} s, median {median[name]:.3f} s")
    print(
        f"  publish / write (medians, same run): {median['publish'] / median['write']:.3f}; "
        f"republish / write: {median['republish'] / median['write']:.3f}"
    )


if __name__ == "__main__":
    main()
