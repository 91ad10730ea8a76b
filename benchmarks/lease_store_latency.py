"""Issue 25's two lease designs, timed: a lease taken and released as files beside the table (pipeline/publish/
lease.py) against one lease step (take, renew or release) as a table-property commit in the catalog (the other
design: the lease held in the table's metadata, fenced by the catalog's compare-and-swap).

    python benchmarks/lease_store_latency.py [--snapshots 0,100,365] [--repeat 20]

Real SQLite SQL catalog and local warehouse in a temporary folder; each table gets N snapshots first (one append per
day, as N nights of publishing leave), since a property commit rewrites the table's whole metadata file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq


def _table(catalog, name: str, snapshots: int, root: str):
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import IdentityTransform

    arrow = pa.schema([("review_id", pa.int64()), ("sentiment_score", pa.float32()), ("dt", pa.date32())])
    schema = catalog._convert_schema_if_needed(arrow)
    spec = PartitionSpec(PartitionField(source_id=schema.find_field("dt").field_id, field_id=1000,
                                        transform=IdentityTransform(), name="dt"))  # fmt: skip
    table = catalog.create_table(name, schema=schema, partition_spec=spec)
    for n in range(snapshots):
        day = dt.date(2025, 1, 1) + dt.timedelta(days=n)
        path = f"{root}/{name}-{n}.parquet"
        pq.write_table(pa.table({"review_id": [n], "sentiment_score": pa.array([0.5], pa.float32()),
                                 "dt": pa.array([day], pa.date32())}, schema=arrow), path)  # fmt: skip
        table.add_files([path])
    return catalog.load_table(name)


def _time(operation, repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        operation(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    from pyiceberg.catalog import load_catalog

    from pipeline.publish import lease

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", default="0,100,365")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        catalog = load_catalog("bench", type="sql", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/wh")
        catalog.create_namespace("bench")
        directory = f"{root}/leases"

        def file_lease(i: int) -> None:  # a released lease: listed, read, judged by the store's clock, then taken
            lease.acquire(directory, f"run-{i}", time.time(), 3600)
            lease.release(directory, f"run-{i}")

        ms = _time(file_lease, args.repeat)
        print(f"file lease beside the table, take + release (list, read, store clock, create, rewrite): {ms:.1f} ms")
        for n in (int(s) for s in args.snapshots.split(",")):
            table = _table(catalog, f"bench.t{n}", n, root)

            def property_commit(i: int, table=table) -> None:
                with table.transaction() as tx:
                    tx.set_properties(**{"sentiment.lease.2026-01-01": f'{{"run": "run-{i}", "generation": {i}}}'})

            ms = _time(property_commit, args.repeat)
            size = os.path.getsize(table.metadata_location.removeprefix("file://"))
            kib = size / 1024
            print(f"one lease step as a catalog property commit, {n} snapshots (metadata {kib:.0f} KiB): {ms:.1f} ms")


if __name__ == "__main__":
    main()
