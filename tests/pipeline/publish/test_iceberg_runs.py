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
    # Each day was new to the tables: append snapshots, which incremental readers take.
    for table in (scores, rejects):
        assert {s.summary.operation.value for s in table.snapshots()} == {"append"}
    # Columns that never hold nulls are required.
    required = [{f.name for f in t.schema().fields if f.required} for t in (scores, rejects)]
    assert required == [
        {"review_id", "customer_id", "sentiment_score", "model_version", "dt"},
        {"reason", "detail", "dt"},
    ]


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
    assert table.current_snapshot().summary.operation.value == "overwrite"  # a rescore replaces
    assert _day_rows(table, SAMPLE_DATE, snapshot_id=before) == rows  # time travel to the night before
    assert len(glob.glob(f"{published}/reports/dt={SAMPLE_DATE}/*/summary.json")) == 1  # the current run's reports


def test_skip_existing_asks_the_tables(published, sample_dir, bundle_dir, caplog):
    config = sample_config(sample_dir, bundle_dir, published, output_format="iceberg", skip_existing=True)
    caplog.set_level(logging.INFO, logger="sentiment-score")  # skipping what is done is the normal case: INFO
    assert execute(config, DAYS, [], backfill=True) == 0
    assert caplog.text.count(f"{len(DAYS)} of {len(DAYS)} day(s) already published by model") == 1


def test_skip_existing_still_skips_the_days_after_their_snapshots_are_expired(
    published, sample_dir, bundle_dir, caplog
):
    """Routine maintenance (expiring every snapshot but the current one) un-published no day: their facts are table
    properties. The twin of the test above after the snapshots that published the days are gone."""
    catalog = _catalog(published)
    for name in ("sentiment.review_scores", "sentiment.review_rejects"):
        table = catalog.load_table(name)
        current = table.current_snapshot().snapshot_id
        table.maintenance.expire_snapshots().by_ids(
            [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current]
        ).commit()
        assert len(catalog.load_table(name).snapshots()) == 1
    config = sample_config(sample_dir, bundle_dir, published, output_format="iceberg", skip_existing=True)
    caplog.set_level(logging.INFO, logger="sentiment-score")
    assert execute(config, DAYS, [], backfill=True) == 0
    assert caplog.text.count(f"{len(DAYS)} of {len(DAYS)} day(s) already published by model") == 1
    assert (
        main(["verify", "--output", str(published), "--output-format", "iceberg", "--start", DAYS[0], "--end", DAYS[1]])
        == 0
    )


def _string_id_reviews(sample_dir, tmp_path):
    """A reviews root holding the sample day with string review ids (and no other day)."""
    import pyarrow.parquet as pq

    reviews = tmp_path / "reviews"
    day = pq.read_table(sample_dir / "reviews" / f"dt={SAMPLE_DATE}")
    (reviews / f"dt={SAMPLE_DATE}").mkdir(parents=True)
    pq.write_table(
        day.set_column(0, "review_id", day["review_id"].cast("string")), reviews / f"dt={SAMPLE_DATE}/r.parquet"
    )
    return reviews


def test_an_empty_first_night_leaves_the_column_types_to_the_first_night_with_rows(
    sample_dir, bundle_dir, tmp_path, capsys, caplog
):
    """An empty night on a fresh output has no file to take the id kind from: it creates no table and is refused
    (exit 1, saying why), so the next night's string ids make string columns; the empty night then publishes into
    the tables with their kinds. The twin: a night of integer ids is then refused naming the column."""
    from pyiceberg.exceptions import NoSuchTableError

    empty_day = "2026-11-26"
    reviews = _string_id_reviews(sample_dir, tmp_path)
    output = tmp_path / "out"

    def run(date, reviews_root=reviews):
        config = sample_config(
            sample_dir,
            bundle_dir,
            output,
            reviews=str(reviews_root),
            output_format="iceberg",
            allow_empty=True,
            date=date,
        )
        return execute(config, [date], [])

    assert run(empty_day) == 1
    said = caplog.text + capsys.readouterr().err
    assert "table sentiment.review_rejects does not exist yet and 2026-11-26 has no rows" in said, said
    assert "refused at start-up: table sentiment.review_rejects does not exist yet" in said, said  # by the plan
    assert not glob.glob(f"{output}/**/*.leases", recursive=True)  # before any lease was taken
    with pytest.raises(NoSuchTableError):
        _catalog(output).load_table("sentiment.review_scores")
    assert run(SAMPLE_DATE) == 0
    scores = _catalog(output).load_table("sentiment.review_scores")
    assert str(scores.schema().find_field("review_id").field_type) == "string"
    assert _day_rows(scores, SAMPLE_DATE) == _summary(output, SAMPLE_DATE)["rows"]["scored"] > 0
    assert run(empty_day) == 0  # the kinds of the tables that exist now
    assert main(["verify", "--output", str(output), "--output-format", "iceberg", "--date", empty_day]) == 0
    assert _day_rows(_catalog(output).load_table("sentiment.review_scores"), empty_day) == 0

    capsys.readouterr()
    assert run(SAMPLE_DATE, reviews_root=sample_dir / "reviews") == 1
    assert "column review_id is long in this run, string in the table" in capsys.readouterr().err


def test_an_empty_first_night_creates_the_tables_with_the_kinds_the_config_states(
    sample_dir, bundle_dir, tmp_path, capsys
):
    """Kinds the config states stand in for the files an empty first night lacks; the twin: a file of another
    kind is refused naming the setting."""
    reviews, output = _string_id_reviews(sample_dir, tmp_path), tmp_path / "out"

    def run(date, review_id_kind):
        config = sample_config(
            sample_dir,
            bundle_dir,
            output,
            reviews=str(reviews),
            output_format="iceberg",
            allow_empty=True,
            date=date,
            column_kinds={"review_id": review_id_kind, "review_text": "string"},
        )
        return execute(config, [date], [])

    assert run("2026-11-26", "string") == 0
    scores = _catalog(output).load_table("sentiment.review_scores")
    assert str(scores.schema().find_field("review_id").field_type) == "string"
    assert _day_rows(scores, "2026-11-26") == 0
    assert run(SAMPLE_DATE, "string") == 0
    assert _day_rows(_catalog(output).load_table("sentiment.review_scores"), SAMPLE_DATE) > 0
    capsys.readouterr()
    assert run(SAMPLE_DATE, "int") == 1
    assert "column 'review_id' is string here but int in setting 'column_kinds.review_id'" in capsys.readouterr().err


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
