"""What readers outside the job see of a published day, for the fault tests: after a crash, a stop, a lost lease or a
race, pyiceberg and polars must read exactly the rows that were published (issue 25: "after every fault test,
pyiceberg and polars read exactly the published rows").

Each reader starts from nothing the job holds: pyiceberg through a catalog opened afresh on the catalog's properties;
polars (its own Parquet reader) from the table's current metadata file for Iceberg, from the output root's folders
for Parquet; pyarrow.dataset as a Hive reader of a Parquet root. A data file that a table lists but that is gone, or
a file in a day's folder that is not part of the day, makes these reads fail or disagree.
"""

from __future__ import annotations

import datetime as dt
import os

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import EqualTo

SCORES, REJECTS = "sentiment.review_scores", "sentiment.review_rejects"
# polars plans an Iceberg scan with pyiceberg unless its own planner plugin is installed (it is not: one reader fewer
# to pin); it reads the planned data files with its own Parquet reader either way.
os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")


def _catalog(catalog_properties: dict):
    properties = dict(catalog_properties)
    return load_catalog(properties.pop("name", "sentiment"), **properties)


def iceberg_day(catalog_properties: dict, table_name: str, day: str) -> dict[str, pa.Table]:
    """The day's rows of one table as pyiceberg and polars read them, sorted by review_id."""
    table = _catalog(catalog_properties).load_table(table_name)
    by_pyiceberg = table.scan(row_filter=EqualTo("dt", day)).to_arrow()
    if table.current_snapshot() is None:
        by_polars = by_pyiceberg.slice(0, 0)
    else:
        frame = pl.scan_iceberg(table.metadata_location).filter(pl.col("dt") == dt.date.fromisoformat(day))
        by_polars = frame.collect().to_arrow()
    return {"pyiceberg": by_pyiceberg, "polars": by_polars}


def _ids(table: pa.Table, column: str) -> list:
    return sorted(table.column(column).to_pylist()) if column in table.column_names else []


def assert_iceberg_readers_see(
    catalog_properties: dict,
    day: str,
    scored: int,
    rejected: int,
    scores_table: str = SCORES,
    rejects_table: str = REJECTS,
) -> dict[str, pa.Table]:
    """Both readers read exactly `scored` score rows and `rejected` reject rows of the day, the same rows (by review
    id; a reject's id may be null), and no review id twice among the scores. Returns the scores pyiceberg read."""
    read = {}
    for name, want in ((scores_table, scored), (rejects_table, rejected)):
        seen = iceberg_day(catalog_properties, name, day)
        counts = {reader: rows.num_rows for reader, rows in seen.items()}
        assert counts == {"pyiceberg": want, "polars": want}, (name, day, counts)
        ids = {reader: _ids(rows, "review_id") for reader, rows in seen.items()}
        assert ids["pyiceberg"] == ids["polars"], (name, day)
        read[name] = seen["pyiceberg"]
    score_ids = _ids(read[scores_table], "review_id")
    assert len(score_ids) == len(set(score_ids)), f"{scores_table} {day}: a review id twice"
    return read[scores_table]


def embedded_catalog(output) -> dict:
    """The catalog properties of an output's embedded catalog (OUTPUT/catalog.db, OUTPUT/warehouse)."""
    from pipeline.publish.iceberg_tables import OutputTables

    return OutputTables(str(output)).catalog_properties


def assert_parquet_readers_see(root, day: str, scored: int) -> pa.Table:
    """A Hive reader of the output root (pyarrow.dataset, which skips `_` folders such as `_rejects`) and polars
    (reading the day's folder with hive partitioning) read exactly `scored` score rows of the day, the same review ids,
    none twice. Returns them as pyarrow read them."""
    root = str(root)
    folder = os.path.join(root, f"dt={day}")
    dataset = pads.dataset(root, format="parquet", partitioning="hive") if os.path.isdir(root) else None
    by_arrow = dataset.to_table(filter=pads.field("dt") == day) if dataset and os.path.isdir(folder) else None
    by_arrow = by_arrow if by_arrow is not None else pa.table({"review_id": pa.array([], pa.int64())})
    if os.path.isdir(folder) and any(n.endswith(".parquet") for n in os.listdir(folder)):
        by_polars = pl.scan_parquet(os.path.join(folder, "*.parquet")).collect().to_arrow()
    else:
        by_polars = by_arrow.slice(0, 0)
    counts = {"pyarrow": by_arrow.num_rows, "polars": by_polars.num_rows}
    assert counts == {"pyarrow": scored, "polars": scored}, (root, day, counts)
    ids = _ids(by_arrow, "review_id")
    assert ids == _ids(by_polars, "review_id"), (root, day)
    assert len(ids) == len(set(ids)), f"{root} {day}: a review id twice"
    return by_arrow
