"""What an output root is and holds: inspection that reads only, one format per root, catalogs that are missing,
empty or corrupt, and output paths that URIs would misread (issue 25, defects 3, 4 and 8)."""

import json
import os
import subprocess
import sys
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.errors import ConfigError, OutputError
from pipeline.publish.factory import publisher_for
from pipeline.publish.iceberg_commit import DayCommit
from pipeline.publish.iceberg_tables import OutputTables
from pipeline.publish.publisher import ICEBERG, PARQUET, PartitionFacts, RowCounts
from tests.conftest import SAMPLE_DATE, file_hashes, score_args
from tests.pipeline.publish.test_iceberg import REJECTS, SCORES, day_rows, stage, write_local
from transforms.io import Shard

DAY = "2026-03-01"
# Characters a URI reads as something else: a fragment, a query, an escape.
URI_SPECIAL = "o#1?x%41"


def publish_parquet(root, day: str = DAY, run: str = "run-p") -> None:
    """One real Parquet partition published through the Parquet publisher."""
    staging = os.path.join(str(root) + ".staging", run)
    shards = []
    for kind, schema in (("scores", SCORES), ("rejects", REJECTS)):
        path = os.path.join(staging, f"{kind}-{run}-0.parquet")
        table = schema.empty_table() if kind == "rejects" else stage_scores(3)
        write_local(table, path)
        shards.append(Shard(kind, path, table.num_rows))
    facts = PartitionFacts(run, "v1", RowCounts(3, 3, 0), partition=day)
    reports = {"summary.json": json.dumps({"run_id": run, "date": day}).encode()}
    publisher_for(str(root), PARQUET).publish(day, shards, facts, reports, fence=lambda: None)


def stage_scores(n: int) -> pa.Table:
    ids = pa.array(range(n), pa.int64())
    return pa.table([ids, ids, pa.array([0.5] * n, pa.float32()), pa.array(["v1"] * n)], schema=SCORES)


def publish_iceberg(tmp_path, root, day: str = DAY, run: str = "run-i") -> DayCommit:
    """One real day published into the embedded catalog of root."""
    output = DayCommit(OutputTables(str(root)))
    output.prepare({"scores": SCORES, "rejects": REJECTS})
    output.publish(*stage(tmp_path, day, run, 5, 1, write=write_local))
    return output


# ------------------------------------------------------------------------------------- inspection reads only (3)


@pytest.mark.parametrize("output_format", [PARQUET, ICEBERG])
def test_inspecting_a_missing_output_creates_nothing_and_says_no_such_output(tmp_path, output_format):
    root = tmp_path / "mistyped"
    publisher = publisher_for(str(root), output_format)
    check = publisher.check(DAY)
    assert not check.complete
    assert f"{root}: no such output" in check.message
    assert publisher.published_version(DAY) is None
    assert publisher.published_summary(DAY) is None
    assert publisher.previous_summary(DAY) is None
    state = publisher.state()
    assert (state.exists, state.other_format) == (False, None)
    assert os.listdir(tmp_path) == []


def test_inspecting_a_parquet_root_as_iceberg_creates_nothing_and_names_what_it_holds(tmp_path):
    root = tmp_path / "out"
    publish_parquet(root)
    before = file_hashes(tmp_path)
    publisher = publisher_for(str(root), ICEBERG)
    check = publisher.check(DAY)
    assert not check.complete
    assert f"{root} holds output_format parquet, not iceberg" in check.message
    assert publisher.published_version(DAY) is None
    assert publisher.state().other_format == PARQUET
    assert file_hashes(tmp_path) == before
    assert ds.dataset(str(root), format="parquet", partitioning="hive").to_table().num_rows == 3  # readers still read


def test_inspecting_an_iceberg_root_as_parquet_names_what_it_holds(tmp_path):
    root = tmp_path / "out"
    publish_iceberg(tmp_path, root)
    before = file_hashes(root)
    publisher = publisher_for(str(root), PARQUET)
    assert f"{root} holds output_format iceberg, not parquet" in publisher.check(DAY).message
    assert publisher.state().other_format == ICEBERG
    assert file_hashes(root) == before


def test_inspecting_a_published_iceberg_day_finds_it_complete_and_changes_no_byte(tmp_path):
    root = tmp_path / "out"
    publish_iceberg(tmp_path, root)
    before = file_hashes(root)
    publisher = publisher_for(str(root), ICEBERG)
    check = publisher.check(DAY)
    assert check.complete, check.message
    assert publisher.published_version(DAY) == "v1"
    assert publisher.state().exists
    assert file_hashes(root) == before


def test_a_configured_sqlite_catalog_is_inspected_read_only_and_a_missing_one_is_not_created(tmp_path):
    catalog = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'shared' / 'catalog.db'}",
        "warehouse": f"file://{tmp_path}/wh",
    }
    (tmp_path / "shared").mkdir()
    output = DayCommit(OutputTables(str(tmp_path / "out"), catalog=catalog))
    output.prepare({"scores": SCORES, "rejects": REJECTS})
    output.publish(*stage(tmp_path, DAY, "run-c", 5, 1, write=write_local))
    before = file_hashes(tmp_path)
    check = publisher_for(str(tmp_path / "out"), ICEBERG, catalog).check(DAY)
    assert check.complete, check.message
    assert file_hashes(tmp_path) == before
    missing = {**catalog, "uri": f"sqlite:///{tmp_path / 'nowhere' / 'catalog.db'}"}
    check = publisher_for(str(tmp_path / "out"), ICEBERG, missing).check(DAY)
    assert not check.complete
    assert not (tmp_path / "nowhere").exists()


def _uri_filename_catalogs(tmp_path) -> list[tuple[str, dict]]:
    """Configured SQLite catalogs given as SQLite URI filenames (`file:PATH?...&uri=true`), each in a folder that
    does not exist yet: a plain path, and a path with URI_SPECIAL quoted as sqlite_url quotes it (SQLAlchemy decodes
    the URL once, SQLite the filename once)."""
    plain, special = tmp_path / "plain" / "catalogs", tmp_path / URI_SPECIAL / "catalogs"
    uris = {
        plain: f"sqlite:///file:{plain}/catalog.db?mode=rwc&uri=true",
        special: f"sqlite:///file:{quote(quote(str(special)))}/catalog.db?uri=true",
    }
    return [
        (folder, {"type": "sql", "uri": uri, "warehouse": f"file://{tmp_path}/wh-{n}"})
        for n, (folder, uri) in enumerate(uris.items())
    ]


def test_a_configured_sqlite_uri_filename_catalog_is_created_in_the_folder_it_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a uri misread as a plain path would create its folder here (file:/...)
    for n, (folder, catalog) in enumerate(_uri_filename_catalogs(tmp_path)):
        output = DayCommit(OutputTables(str(tmp_path / f"out-{n}"), catalog=catalog))
        output.prepare({"scores": SCORES, "rejects": REJECTS})
        output.publish(*stage(tmp_path, DAY, f"run-{n}", 5, 1, write=write_local))
        assert sorted(os.listdir(folder)) == ["catalog.db"]
        check = publisher_for(str(tmp_path / f"out-{n}"), ICEBERG, catalog).check(DAY)
        assert check.complete, check.message
    assert not (tmp_path / "file:").exists()


def test_a_configured_sqlite_uri_filename_catalog_is_not_created_by_inspection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder, catalog in _uri_filename_catalogs(tmp_path):
        check = publisher_for(str(tmp_path / "out"), ICEBERG, catalog).check(DAY)
        assert not check.complete
        assert not folder.parent.exists()
    assert sorted(os.listdir(tmp_path)) == []


# ---------------------------------------------------------------------------------------- one format per root (4)


def test_an_iceberg_run_into_a_parquet_root_is_refused_naming_the_root_and_its_format(tmp_path):
    root = tmp_path / "out"
    publish_parquet(root)
    before = file_hashes(tmp_path)
    with pytest.raises(ConfigError, match=rf"output {root} holds output_format parquet.*--output-format parquet"):
        publisher_for(str(root), ICEBERG).check_layout(dated=True)
    assert file_hashes(tmp_path) == before


def test_a_parquet_run_into_an_iceberg_root_is_refused_naming_the_root_and_its_format(tmp_path):
    root = tmp_path / "out"
    publish_iceberg(tmp_path, root)
    before = file_hashes(root)
    for dated in (True, False):
        with pytest.raises(ConfigError, match=rf"output {root} holds output_format iceberg.*--output-format iceberg"):
            publisher_for(str(root), PARQUET).check_layout(dated=dated)
    assert file_hashes(root) == before


@pytest.mark.parametrize("output_format", [PARQUET, ICEBERG])
def test_a_root_of_the_same_format_or_a_new_one_passes_the_layout_check(tmp_path, output_format):
    root = tmp_path / "out"
    publisher_for(str(root), output_format).check_layout(dated=True)  # a new root
    if output_format == PARQUET:
        publish_parquet(root)
    else:
        publish_iceberg(tmp_path, root)
    publisher_for(str(root), output_format).check_layout(dated=True)


# --------------------------------------------------------------------- catalogs missing, empty, corrupt (8)


def test_a_corrupt_catalog_is_named_by_every_use_and_not_replaced(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "catalog.db").write_bytes(b"this is not SQLite" * 100)
    before = file_hashes(root)
    publisher = publisher_for(str(root), ICEBERG)
    with pytest.raises(OutputError, match=rf"{root / 'catalog.db'}: not a readable Iceberg catalog"):
        publisher.prepare({"scores": SCORES, "rejects": REJECTS})
    with pytest.raises(OutputError, match=rf"{root / 'catalog.db'}: not a readable Iceberg catalog"):
        publisher.published_version(DAY)
    check = publisher.check(DAY)
    assert not check.complete and f"{root / 'catalog.db'}: not a readable Iceberg catalog" in check.message
    assert file_hashes(root) == before


@pytest.mark.parametrize("catalog", ["empty", "missing"])
def test_a_lost_catalog_beside_a_warehouse_is_refused_not_started_over(tmp_path, catalog):
    root = tmp_path / "out"
    publish_iceberg(tmp_path, root)
    if catalog == "empty":
        (root / "catalog.db").write_bytes(b"")
    else:
        (root / "catalog.db").unlink()
    before = file_hashes(root)
    with pytest.raises(OutputError, match=rf"{root / 'catalog.db'} .*{root / 'warehouse'} holds Iceberg tables"):
        DayCommit(OutputTables(str(root))).prepare({"scores": SCORES, "rejects": REJECTS})
    assert file_hashes(root) == before


def test_a_new_root_gets_a_new_catalog(tmp_path):
    output = publish_iceberg(tmp_path, tmp_path / "out")
    assert day_rows(output, "scores", DAY).num_rows == 5


def test_an_output_path_with_uri_characters_keeps_every_file_inside_it(tmp_path):
    root = tmp_path / URI_SPECIAL
    output = publish_iceberg(tmp_path, root)
    assert sorted(os.listdir(tmp_path)) == sorted([URI_SPECIAL, "staging"])
    assert (root / "catalog.db").is_file()
    assert day_rows(output, "scores", DAY).num_rows == 5
    location = output.catalog.load_table("sentiment.review_scores").location()
    assert str(root / "warehouse") in location
    check = publisher_for(str(root), ICEBERG).check(DAY)
    assert check.complete, check.message


# ----------------------------------------------------------------------------------------- the command line


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("held", [PARQUET, ICEBERG])
def test_a_run_of_the_other_format_exits_2_before_writing(sample_dir, bundle_dir, tmp_path, held):
    root = tmp_path / "out"
    if held == PARQUET:
        publish_parquet(root, SAMPLE_DATE)
    else:
        publish_iceberg(tmp_path, root, SAMPLE_DATE)
    before = file_hashes(root)
    other = ICEBERG if held == PARQUET else PARQUET
    result = _cli(*score_args(sample_dir, bundle_dir, root, "--runner=FnApiRunner", "--output-format", other))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"output {root} holds output_format {held}" in result.stderr.strip().splitlines()[-1]
    assert file_hashes(root) == before
    assert not os.path.exists(f"{root}.staging") or held == PARQUET  # the Parquet publish above staged there


@pytest.mark.slow
def test_verify_as_iceberg_of_a_parquet_root_or_a_mistyped_path_writes_nothing(tmp_path):
    root = tmp_path / "out"
    publish_parquet(root)
    before = file_hashes(tmp_path)
    for output in (root, tmp_path / "mistyped"):
        result = _cli("verify", "--output", str(output), "--output-format", ICEBERG, "--date", DAY)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        said = result.stdout + result.stderr
        assert f"{output}: no such output" in said or f"{output} holds parquet output, not iceberg" in said, said
    assert file_hashes(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "backfill", "verify"])
def test_a_corrupt_catalog_ends_in_one_line_naming_it(sample_dir, bundle_dir, tmp_path, command):
    root = tmp_path / "out"
    root.mkdir()
    (root / "catalog.db").write_bytes(b"this is not SQLite" * 100)
    args = score_args(sample_dir, bundle_dir, root, "--runner=FnApiRunner", "--output-format", ICEBERG)
    if command == "backfill":
        args = ["backfill", *args[1 : args.index("--date")], "--start", SAMPLE_DATE, "--end", SAMPLE_DATE]
        args += ["--skip-existing", "--runner=FnApiRunner", "--output-format", ICEBERG]
    elif command == "verify":
        args = ["verify", "--output", str(root), "--output-format", ICEBERG, "--date", SAMPLE_DATE]
    result = _cli(*args)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert f"{root / 'catalog.db'}: not a readable Iceberg catalog" in result.stdout + result.stderr
    assert (root / "catalog.db").read_bytes() == b"this is not SQLite" * 100
    assert os.listdir(root) == ["catalog.db"]


@pytest.mark.slow
def test_a_lineage_file_under_a_regular_file_is_a_config_error_naming_it(sample_dir, bundle_dir, tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    lineage = tmp_path / "plain" / "events" / "lineage.jsonl"
    result = _cli(*score_args(sample_dir, bundle_dir, tmp_path / "out", "--lineage-file", str(lineage)))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"setting 'lineage_file' {lineage}: {tmp_path / 'plain'} is not a folder" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("output_format", [PARQUET, ICEBERG])
def test_a_score_into_a_path_with_uri_characters_writes_only_inside_it(sample_dir, bundle_dir, tmp_path, output_format):
    root = tmp_path / URI_SPECIAL
    args = score_args(sample_dir, bundle_dir, root, "--runner=FnApiRunner", "--output-format", output_format)
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([URI_SPECIAL, f"{URI_SPECIAL}.staging"])
    verified = _cli("verify", "--output", str(root), "--output-format", output_format, "--date", SAMPLE_DATE)
    assert verified.returncode == 0, verified.stdout
    if output_format == PARQUET:
        assert ds.dataset(str(root), format="parquet", partitioning="hive").to_table().num_rows > 0
        return
    table = OutputTables(str(root)).catalog.load_table("sentiment.review_scores")
    assert table.scan().to_arrow().num_rows > 0
    assert all(str(root) in task.file.file_path for task in table.scan().plan_files())


def test_a_fresh_iceberg_output_refuses_a_day_whose_column_kinds_are_a_guess(tmp_path):
    """What the plan asks before any lease (issue 25, 6): tables that do not exist cannot take their types from a
    guess. The twins: once the tables exist, and for Parquet folders (each partition stands alone), nothing is
    refused."""
    iceberg = publisher_for(str(tmp_path / "ice"), ICEBERG)
    why = iceberg.refuses_guessed_kinds(SAMPLE_DATE)
    assert why and why.startswith(f"table sentiment.review_rejects does not exist yet and {SAMPLE_DATE} has no rows")
    DayCommit(OutputTables(str(tmp_path / "ice"))).prepare({"scores": SCORES, "rejects": REJECTS})
    assert publisher_for(str(tmp_path / "ice"), ICEBERG).refuses_guessed_kinds(SAMPLE_DATE) is None
    assert publisher_for(str(tmp_path / "pq"), PARQUET).refuses_guessed_kinds(SAMPLE_DATE) is None
