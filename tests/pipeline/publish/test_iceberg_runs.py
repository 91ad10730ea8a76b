"""The whole job publishing to Iceberg: a backfill into the embedded SQLite catalog, read back with pyiceberg scans,
verify, a rerun (one more snapshot, the previous night still readable), --skip-existing, and the refusals."""

from __future__ import annotations

import glob
import json
import logging

import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import EqualTo

from pipeline.cli.main import main
from pipeline.errors import ConfigError
from pipeline.run.launcher import execute
from tests.conftest import SAMPLE_DATE, sample_config

pytestmark = pytest.mark.slow
DAYS = ["2026-11-27", SAMPLE_DATE]


def _catalog(output):
    return load_catalog(
        "sentiment", type="sql", uri=f"sqlite:///{output}/catalog.db", warehouse=f"file://{output}/warehouse"
    )


def _day_rows(table, day: str, snapshot_id: int | None = None) -> int:
    return table.scan(row_filter=EqualTo("dt", day), snapshot_id=snapshot_id).to_arrow().num_rows


def _summary(output, day: str) -> dict:
    [path] = glob.glob(f"{output}/reports/dt={day}/*/summary.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def published(sample_dir, bundle_dir, tmp_path_factory):
    """Two days backfilled into Iceberg tables on the embedded catalog."""
    output = tmp_path_factory.mktemp("iceberg") / "out"
    config = sample_config(sample_dir, bundle_dir, output, output_format="iceberg", runtime="litert")
    assert execute(config, DAYS, [], backfill=True) == 0
    return output


def test_a_backfill_publishes_each_day_into_the_tables_with_its_rows_and_facts(published):
    catalog = _catalog(published)
    scores, rejects = catalog.load_table("sentiment.review_scores"), catalog.load_table("sentiment.review_rejects")
    assert [f.name for f in scores.spec().fields] == ["dt"]
    for day in DAYS:
        summary = _summary(published, day)
        rows = summary["rows"]
        assert _day_rows(scores, day) == rows["scored"] and _day_rows(rejects, day) == rows["rejected"]
        assert rows["scored"] + rows["rejected"] == rows["read"] > 0
    snapshot = scores.current_snapshot().summary.additional_properties
    assert snapshot["sentiment.run-id"] == summary["run_id"]
    assert snapshot["sentiment.model-version"] == summary["model_version"]
    assert int(snapshot["sentiment.rows-read"]) == summary["rows"]["read"]
    # No Parquet folders, no _SUCCESS: the tables are the output.
    assert not glob.glob(f"{published}/dt=*")


def test_verify_reads_the_tables_and_names_a_day_never_published(published, capsys):
    args = ["verify", "--output", str(published), "--output-format", "iceberg"]
    assert main([*args, "--start", DAYS[0], "--end", DAYS[1]]) == 0
    assert capsys.readouterr().out.count("OK ") == 2
    assert main([*args, "--date", "2026-11-20"]) == 1  # the twin
    assert "INCOMPLETE 2026-11-20" in capsys.readouterr().out


def test_a_rerun_replaces_the_day_in_one_more_snapshot_and_the_previous_night_stays_readable(
    published, sample_dir, bundle_dir
):
    table = _catalog(published).load_table("sentiment.review_scores")
    before, rows = table.current_snapshot().snapshot_id, _day_rows(table, SAMPLE_DATE)
    snapshots = len(table.metadata.snapshots)
    config = sample_config(
        sample_dir, bundle_dir, published, output_format="iceberg", runtime="litert", date=SAMPLE_DATE
    )
    assert execute(config, [SAMPLE_DATE], []) == 0
    table = _catalog(published).load_table("sentiment.review_scores")
    assert _day_rows(table, SAMPLE_DATE) == rows  # replaced, not doubled
    assert len(table.metadata.snapshots) == snapshots + 1
    assert _day_rows(table, SAMPLE_DATE, snapshot_id=before) == rows  # time travel to the night before
    assert len(glob.glob(f"{published}/reports/dt={SAMPLE_DATE}/*/summary.json")) == 1  # the current run's reports


def test_skip_existing_asks_the_tables(published, sample_dir, bundle_dir, caplog):
    config = sample_config(sample_dir, bundle_dir, published, output_format="iceberg", skip_existing=True)
    caplog.set_level(logging.INFO, logger="sentiment-score")  # skipping what is done is the normal case: INFO
    assert execute(config, DAYS, [], backfill=True) == 0
    assert caplog.text.count(f"{len(DAYS)} of {len(DAYS)} day(s) already published by model") == 1


def test_iceberg_needs_a_date_and_a_catalog_for_an_object_store(sample_dir, bundle_dir, tmp_path):
    undated = sample_config(sample_dir, bundle_dir, tmp_path / "o", output_format="iceberg")
    with pytest.raises(ConfigError, match="output_format iceberg publishes dt= partitions"):
        execute(undated, None, [])
    remote = sample_config(sample_dir, bundle_dir, "s3://bucket/scores", output_format="iceberg", date=SAMPLE_DATE)
    with pytest.raises(ConfigError, match="setting 'catalog': output s3://bucket/scores: the embedded Iceberg catalog"):
        execute(remote, [SAMPLE_DATE], [])


def test_the_table_names_come_from_the_config(sample_dir, bundle_dir, tmp_path):
    from pyiceberg.exceptions import NoSuchTableError

    tables = {"scores": "nightly.scores", "rejects": "nightly.rejects"}
    output = tmp_path / "out"
    config = sample_config(
        sample_dir, bundle_dir, output, output_format="iceberg", iceberg_tables=tables, date=SAMPLE_DATE
    )
    assert execute(config, [SAMPLE_DATE], []) == 0
    catalog = _catalog(output)
    assert _day_rows(catalog.load_table("nightly.scores"), SAMPLE_DATE) > 0
    with pytest.raises(NoSuchTableError):
        catalog.load_table("sentiment.review_scores")
    with pytest.raises(ConfigError, match="setting 'iceberg_tables' must map scores and rejects"):
        sample_config(sample_dir, bundle_dir, output, output_format="iceberg", iceberg_tables={"scores": "x"})
