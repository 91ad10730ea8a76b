"""Publishing: the publisher interface, Parquet folders, Iceberg tables, the commit step, leases and storage."""
