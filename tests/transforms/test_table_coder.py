"""The (partition, Arrow table) coder: IPC round trips, a slice encodes only its rows, estimating encodes none."""

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

from transforms.table_coder import PARTITION_TABLE, ArrowTableCoder

TABLE = pa.table({"review_id": pa.array(np.arange(10_000), pa.int64()), "review_text": ["good tent"] * 10_000})


def test_a_table_round_trips_with_its_schema_and_rows():
    coder = beam.coders.registry.get_coder(PARTITION_TABLE)
    partition, table = coder.decode(coder.encode(("2026-11-28", TABLE)))
    assert partition == "2026-11-28" and table.equals(TABLE) and table.schema == TABLE.schema


def test_a_slice_encodes_only_its_rows():
    coder = ArrowTableCoder()
    whole, part = len(coder.encode(TABLE)), len(coder.encode(TABLE.slice(0, 10)))
    assert part < whole / 100
    assert coder.decode(coder.encode(TABLE.slice(5, 3)))["review_id"].to_pylist() == [5, 6, 7]


def test_the_size_estimate_is_the_tables_bytes_and_encodes_nothing(monkeypatch):
    coder = beam.coders.registry.get_coder(PARTITION_TABLE)
    monkeypatch.setattr(ArrowTableCoder, "encode", lambda self, table: pytest.fail("encoded to estimate a size"))
    assert coder.get_impl().estimate_size(("d", TABLE)) >= TABLE.nbytes


def test_the_stages_that_emit_tables_declare_them():
    from transforms.featurize import FeaturizeTables
    from transforms.inference import RouteScores
    from transforms.io import ReadParquetBatches
    from transforms.validate import ValidateRows

    for dofn in (ReadParquetBatches, ValidateRows, FeaturizeTables, RouteScores):
        hints = dofn.__dict__["_type_hints"]
        assert hints.output_types[0][0] == PARTITION_TABLE, dofn
