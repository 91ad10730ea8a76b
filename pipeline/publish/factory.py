"""Picks the publisher of an output root by its format; apart from the interface so that module imports no format."""

from __future__ import annotations

from pipeline.publish.publisher import ICEBERG, PARQUET, Publisher


def publisher_for(
    output: str,
    output_format: str = PARQUET,
    catalog: dict | None = None,
    tables: dict | None = None,
    retention_days: float | None = None,
) -> Publisher:
    """The publisher of an output root in a format (config `output_format`, `catalog`, `iceberg_tables`,
    `snapshot_retention_days`)."""
    from pipeline.publish.iceberg import IcebergPublisher, holds_iceberg_output
    from pipeline.publish.parquet import ParquetFolders, holds_parquet_output

    if output_format == ICEBERG:
        publisher = IcebergPublisher(output, catalog, tables, retention_days)
    else:
        publisher = ParquetFolders(output)
    # A root holds one format: each publisher tells the others' output apart by these (pipeline/publish/publisher.py).
    holds = {PARQUET: holds_parquet_output, ICEBERG: holds_iceberg_output}
    publisher.other_formats = {f: check for f, check in holds.items() if f != publisher.format}
    return publisher
