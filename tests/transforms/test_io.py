"""Reading Parquet inputs: footers read at once, read tasks of whole row groups, and reads split between them."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.restriction_trackers import OffsetRange

from tests.conftest import corrupt_first_page_header
from transforms.io import ReadParquetBatches, RowGroupRanges, inspect_files, plan_read_tasks
from transforms.schema import FILE_INDEX, ROW_INDEX, InputError

SCHEMA = pa.schema([("review_id", pa.int64()), (FILE_INDEX, pa.int32()), (ROW_INDEX, pa.int64())])


def _write(path, rows: int, row_group: int, start: int = 0):
    pq.write_table(pa.table({"review_id": np.arange(start, start + rows)}), path, row_group_size=row_group)
    return str(path)


def _read(fn, task, restriction=None):
    """Runs the DoFn over a task (or part of one) with a real restriction tracker, as a runner does."""
    provider = RowGroupRanges()
    tracker = provider.create_tracker(restriction or provider.initial_restriction(task))
    tables = [t for _, t in fn.process(task, tracker)]
    tracker.check_done()
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


@pytest.fixture
def files(tmp_path):
    paths = [_write(tmp_path / "a.parquet", 2500, 1000), _write(tmp_path / "b.parquet", 700, 1000, start=2500)]
    return [info for info, _ in inspect_files([(p, i, "2026-11-28") for i, p in enumerate(paths)])]


def test_footers_give_rows_and_row_groups(files):
    a, b = files
    assert (a.index, a.num_rows, a.row_group_rows, a.partition) == (0, 2500, (1000, 1000, 500), "2026-11-28")
    assert (b.index, b.num_rows, b.row_group_rows) == (1, 700, (700,))


def test_footers_are_read_concurrently_in_order_and_the_first_bad_file_in_order_fails(tmp_path):
    paths = [_write(tmp_path / f"part-{i:03d}.parquet", 10 + i, 5) for i in range(60)]
    infos = inspect_files([(p, i, "") for i, p in enumerate(paths)], threads=16)
    assert [i.path for i, _ in infos] == paths and [i.num_rows for i, _ in infos] == [10 + i for i in range(60)]
    for name in ("part-007.parquet", "part-042.parquet"):
        (tmp_path / name).write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"part-007\.parquet: not a readable Parquet file"):
        inspect_files([(p, i, "") for i, p in enumerate(paths)], threads=16)


def test_read_tasks_are_whole_row_groups_of_about_the_asked_size(files):
    tasks = plan_read_tasks(files, rows_per_task=1500)
    assert [(t.file_index, t.row_groups, t.first_row, t.num_rows) for t in tasks] == [
        (0, (0, 1), 0, 2000),
        (0, (2,), 2000, 500),
        (1, (0,), 0, 700),
    ]
    assert tasks[0].group_rows == (1000, 1000)


def test_a_task_reads_every_row_once_with_its_file_and_row(files):
    fn = ReadParquetBatches(SCHEMA, batch_size=300)
    tables = [_read(fn, t) for t in plan_read_tasks(files, rows_per_task=1500)]
    table = pa.concat_tables(tables)
    assert table["review_id"].to_pylist() == list(range(3200))
    assert table[ROW_INDEX].to_pylist() == list(range(2500)) + list(range(700))
    assert table[FILE_INDEX].to_pylist() == [0] * 2500 + [1] * 700


def test_a_read_split_while_running_reads_every_row_exactly_once(files):
    (task,) = plan_read_tasks(files[:1], rows_per_task=10_000)  # one task of 3 row groups
    fn = ReadParquetBatches(SCHEMA, batch_size=400)
    provider = RowGroupRanges()
    assert provider.restriction_size(task, OffsetRange(1, 3)) == 1500
    tracker = provider.create_tracker(provider.initial_restriction(task))
    reading = fn.process(task, tracker)
    primary = [next(reading)[1]]  # the first batch of row group 0 is out: the runner asks to split the rest
    _, residual = tracker.try_split(0.0)
    assert (tracker.current_restriction().start, tracker.current_restriction().stop) == (0, 1)
    primary += [t for _, t in reading]
    tracker.check_done()
    rest = _read(fn, task, residual)
    assert (residual.start, residual.stop) == (1, 3)
    table = pa.concat_tables([*primary, rest])
    assert table["review_id"].to_pylist() == list(range(2500))
    assert table[ROW_INDEX].to_pylist() == list(range(2500))


def test_a_row_group_that_cannot_be_read_names_the_file(tmp_path):
    path = _write(tmp_path / "bad.parquet", 100, 50)
    corrupt_first_page_header(path)
    ((info, _),) = inspect_files([(path, 0, "")])  # the footer is intact
    (task,) = plan_read_tasks([info])
    with pytest.raises(InputError, match=r"bad\.parquet: cannot read row group 0"):
        _read(ReadParquetBatches(SCHEMA), task)


def _lineage_of_a_read_and_write(files, tmp_path, source, sink):
    """Runs ReadTables into WriteParquetShards on FnApiRunner; returns the Beam Lineage sources and sinks."""
    import apache_beam as beam
    from apache_beam.metrics.metric import Lineage
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.io import ReadTables, WriteParquetShards

    pipeline = beam.Pipeline(runner=FnApiRunner())
    tables = (pipeline | "Read" >> ReadTables(plan_read_tasks(files, 1000), SCHEMA, 1000, dataset=source))["tables"]
    staging = {"2026-11-28": str(tmp_path / "staging" / "day")}
    writer = WriteParquetShards("scores", staging, SCHEMA, "r1", 1000, dataset=sink)
    _ = tables | "Write" >> beam.ParDo(writer)
    result = pipeline.run()
    result.wait_until_finish()
    return Lineage.query(result.metrics(), Lineage.SOURCE), Lineage.query(result.metrics(), Lineage.SINK)


@pytest.mark.slow
def test_the_parquet_source_and_sink_report_their_datasets_by_root_as_beam_lineage(files, tmp_path):
    sources, sinks = _lineage_of_a_read_and_write(files, tmp_path, str(tmp_path), f"file://{tmp_path / 'out'}")
    assert sources == {f"filesystem:localhost.{tmp_path}"}  # the dataset's root, not each file or day folder
    assert sinks == {f"filesystem:localhost.{tmp_path / 'out'}"}  # what the shards are published into


@pytest.mark.slow
def test_a_reader_told_no_dataset_reports_each_file_and_a_writer_told_none_reports_no_sink(files, tmp_path):
    sources, sinks = _lineage_of_a_read_and_write(files, tmp_path, None, None)
    assert sources == {f"filesystem:localhost.{f.path}" for f in files}
    assert sinks == set()


@pytest.mark.parametrize("repeating", [("model_version",), None])
def test_shards_dictionary_encode_only_the_repeating_columns_they_are_told(tmp_path, repeating):
    """The writer's twin of the pipeline's check: told nothing, it keeps Arrow's default (a dictionary tried on
    every column, unique ids and scores included); told the repeating columns, only those."""
    from transforms.io import WriteParquetShards

    schema = pa.schema([("review_id", pa.int64()), ("sentiment_score", pa.float32()), ("model_version", pa.string())])
    table = pa.table(
        {"review_id": np.arange(5000), "sentiment_score": np.linspace(0, 1, 5000, dtype=np.float32)}
    ).append_column("model_version", pa.array(["sha256-1"] * 5000))
    staging = {"2026-11-28": str(tmp_path / "day")}
    writer = WriteParquetShards("scores", staging, schema, "r1", 1000, repeating_columns=repeating)
    writer.start_bundle()
    writer.process(("2026-11-28", table))  # shards come out of finish_bundle
    (shard,) = [windowed.value[1] for windowed in writer.finish_bundle()]
    metadata = pq.ParquetFile(shard.path).metadata
    encoded = {
        metadata.row_group(g).column(c).path_in_schema
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
        if any("DICTIONARY" in e for e in metadata.row_group(g).column(c).encodings)
    }
    assert encoded == ({"model_version"} if repeating else {"review_id", "sentiment_score", "model_version"})
    assert pq.read_table(shard.path).equals(table)
