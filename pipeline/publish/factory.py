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
    if output_format == ICEBERG:
        from pipeline.publish.iceberg import IcebergPublisher

        return IcebergPublisher(output, catalog, tables, retention_days)
    from pipeline.publish.parquet import ParquetFolders

    return ParquetFolders(output)
