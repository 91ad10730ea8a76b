"""Real input that goes wrong at the edges: a bad file in one day of a backfill, writers' leftovers, empty ranges, a
new model with --skip-existing, a second spelling of a date, an output inside an input or of the other layout."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.errors import ConfigError
from pipeline.publish.parquet import ParquetFolders, check_partition, read_manifest
from pipeline.run.config import build_config, validate_date
from pipeline.run.launcher import execute
from pipeline.training.sample_data import write_sample_data
from tests.conftest import partition_summary, retrained_bundle, run_config
from transforms.io import resolve_files

DAYS = ["2026-02-27", "2026-02-28", "2026-03-01"]
BAD_DAY = DAYS[1]


@pytest.fixture(scope="module")
def three_days(tmp_path_factory):
    """Three days of sample reviews (300 a day) and their customers; copied per test before it is damaged."""
    root = tmp_path_factory.mktemp("three-days")
    write_sample_data(str(root), reviews=900, days=3, seed=9, end_date=DAYS[-1])
    return root


def _copy(three_days, tmp_path) -> dict:
    shutil.copytree(three_days, tmp_path / "in")
    root = tmp_path / "in"
    return {"customers": str(root / "customers"), "reviews": str(root / "reviews"), "output": str(tmp_path / "out")}


def _day_file(paths: dict, day: str) -> str:
    return sorted(glob.glob(f"{paths['reviews']}/dt={day}/*.parquet"))[0]


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _empty(path: str) -> None:
    open(path, "wb").close()


def _not_parquet(path: str) -> None:
    with open(path, "w") as f:
        f.write("review_id,customer_id,review_text\n1,2,a csv file named .parquet\n")


def _rename_text_column(path: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.rename_columns(["body" if n == "review_text" else n for n in table.column_names]), path)


def _text_as_numbers(path: str) -> None:
    table = pq.read_table(path)
    index = table.column_names.index("review_text")
    pq.write_table(table.set_column(index, "review_text", pa.array(range(table.num_rows), pa.int64())), path)


DAMAGE = {
    "truncated": (_truncate, "not a readable Parquet file"),
    "zero-bytes": (_empty, "not a readable Parquet file"),
    "not-parquet": (_not_parquet, "not a readable Parquet file"),
    "renamed-column": (_rename_text_column, "missing required column 'review_text'"),
    "wrong-type": (_text_as_numbers, "column 'review_text' has type int64, expected a string"),
}


# ---------------------------------------------------------------------------------------------------------------------
# 1. A start-up problem of one day fails that day only.


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_bad_file_in_one_day_fails_that_day_at_start_up_and_the_others_publish(
    three_days, bundle_dir, tmp_path, capsys, damage
):
    paths = _copy(three_days, tmp_path)
    bad = _day_file(paths, BAD_DAY)
    spoil, reason = DAMAGE[damage]
    spoil(bad)
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir), DAYS, [], backfill=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("sentiment-score: error: 1 of 3 partition(s) not published"), last
    assert f"dt={BAD_DAY}" in last and reason in last and "2 published" in last
    for day in (DAYS[0], DAYS[2]):
        assert check_partition(f"{paths['output']}/dt={day}").complete
    assert not os.path.exists(f"{paths['output']}/dt={BAD_DAY}")
    with open(last.rsplit("run summary ", 1)[1], encoding="utf-8") as f:
        record = json.load(f)
    assert record["failed_partitions"] == [BAD_DAY]
    failed = [p for p in record["partitions"] if p["partition"] == BAD_DAY][0]
    assert bad in failed["message"] and reason in failed["message"]


def test_the_same_bad_file_in_a_single_date_run_stops_it_at_start_up_naming_the_file(
    three_days, bundle_dir, tmp_path, capsys
):
    paths = _copy(three_days, tmp_path)
    bad = _day_file(paths, BAD_DAY)
    _truncate(bad)
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir, date=BAD_DAY), [BAD_DAY], []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and "not a readable Parquet file" in err[0]
    assert not os.path.exists(paths["output"] + f"/dt={BAD_DAY}")


def test_a_day_whose_ids_are_of_another_kind_fails_that_day_only_in_the_plan(three_days, bundle_dir, tmp_path):
    """Most files have integer review ids; a day that switched to strings is refused, not the run."""
    from pipeline.run.plan import plan_run

    paths = _copy(three_days, tmp_path)
    path = _day_file(paths, BAD_DAY)
    table = pq.read_table(path)
    index = table.column_names.index("review_id")
    pq.write_table(table.set_column(index, "review_id", table["review_id"].cast(pa.string())), path)
    plan = plan_run(run_config(paths, bundle_dir), DAYS, backfill=True)
    assert plan.partitions == [DAYS[0], DAYS[2]] and plan.schema.review_id_kind == "int"
    assert list(plan.failed) == [BAD_DAY] and "column 'review_id' is string here but int in" in plan.failed[BAD_DAY]
    # The twins: that day alone is a valid run of string ids; outside a backfill the mismatch stops the run.
    assert plan_run(run_config(paths, bundle_dir), [BAD_DAY], backfill=False).schema.review_id_kind == "string"
    with pytest.raises(ValueError, match="column 'review_id' is string here"):
        plan_run(run_config(paths, bundle_dir), DAYS, backfill=False)


def test_customers_that_cannot_be_read_still_stop_a_backfill_at_start_up(three_days, bundle_dir, tmp_path, capsys):
    paths = _copy(three_days, tmp_path)
    _truncate(sorted(glob.glob(f"{paths['customers']}/*.parquet"))[0])
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir), DAYS, [], backfill=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "customers" in err[0] and "not a readable Parquet file" in err[0]
    assert not os.path.exists(paths["output"])


# ---------------------------------------------------------------------------------------------------------------------
# 2. Writers' leftovers below an input root are never read.


def _leftovers(day_dir: str, committed: str) -> list[str]:
    """Copies of the committed file where Hadoop/Spark writers and tools leave them."""
    made = []
    for relative in (
        "_temporary/0/_temporary/attempt_202611280000_0001_m_000000_0/part-00000.parquet",
        ".staging/part-00000.parquet",
        ".hidden/part-00000.parquet",
        "_committed_123.parquet",
        ".part-00000.parquet.crc",
    ):
        target = os.path.join(day_dir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(committed, target)
        made.append(target)
    for name in ("_SUCCESS", "_started_123", "part-00000.crc"):
        open(os.path.join(day_dir, name), "w").close()
    return made


def test_resolve_files_skips_hidden_components_below_the_root_but_reads_nested_data(tmp_path):
    day = tmp_path / "reviews" / "dt=2026-02-28"
    committed = day / "part-00000.parquet"
    os.makedirs(day / "region=eu")
    pq.write_table(pa.table({"x": [1]}), committed)
    shutil.copy(committed, day / "region=eu" / "part-00001.parquet")
    _leftovers(str(day), str(committed))
    found = resolve_files(str(day))
    assert found == [str(committed), str(day / "region=eu" / "part-00001.parquet")]
    # A root that itself has a "_" or "." component is still read: only components below it count.
    hidden_root = tmp_path / "_landing" / ".in"
    shutil.copytree(day, hidden_root)
    assert resolve_files(str(hidden_root)) == [
        str(hidden_root / "part-00000.parquet"),
        str(hidden_root / "region=eu" / "part-00001.parquet"),
    ]
    # Globs are judged below their fixed folders.
    assert resolve_files(str(tmp_path / "reviews" / "dt=*" / "**.parquet")) == found


@pytest.mark.slow
def test_a_stale_temporary_copy_is_not_read_and_does_not_win_over_the_committed_file(three_days, bundle_dir, tmp_path):
    paths = _copy(three_days, tmp_path)
    committed = _day_file(paths, BAD_DAY)
    rows = pq.read_metadata(committed).num_rows
    _leftovers(os.path.dirname(committed), committed)
    assert execute(run_config(paths, bundle_dir, date=BAD_DAY), [BAD_DAY], []) == 0
    manifest = read_manifest(f"{paths['output']}/dt={BAD_DAY}")
    assert manifest["rows"]["read"] == rows  # not rows x 4, and no duplicate_review_id rejects from the copies
    summary = partition_summary(f"{paths['output']}/dt={BAD_DAY}")
    assert summary["input_files"]["reviews"] == [committed]
    assert "duplicate_review_id" not in summary["rejected_by_reason"]


# ---------------------------------------------------------------------------------------------------------------------
# 3. A backfill that finds no input at all fails.


def test_a_backfill_that_finds_no_input_for_any_day_exits_1_naming_the_root(three_days, bundle_dir, tmp_path, capsys):
    paths = _copy(three_days, tmp_path)
    paths["reviews"] += "-mistyped"
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir), DAYS, [], backfill=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and paths["reviews"] in err[0] and "no review files for any day" in err[0]


@pytest.mark.slow
def test_a_few_empty_days_in_a_range_are_reported_not_fatal(three_days, bundle_dir, tmp_path, caplog):
    paths = _copy(three_days, tmp_path)
    days = ["2026-02-25", "2026-02-26", *DAYS]  # two days before the data starts
    assert execute(run_config(paths, bundle_dir, backfill_chunk_days=7), days, [], backfill=True) == 0
    assert "2 of 5 day(s) have no review files (no input), skipped: 2026-02-25, 2026-02-26" in caplog.text
    assert all(check_partition(f"{paths['output']}/dt={day}").complete for day in DAYS)


@pytest.mark.slow
def test_an_empty_range_with_allow_empty_writes_empty_partitions(three_days, bundle_dir, tmp_path):
    paths = _copy(three_days, tmp_path)
    days = ["2026-01-01", "2026-01-02"]
    assert execute(run_config(paths, bundle_dir, allow_empty=True), days, [], backfill=True) == 0
    assert [read_manifest(f"{paths['output']}/dt={d}")["rows"]["read"] for d in days] == [0, 0]


# ---------------------------------------------------------------------------------------------------------------------
# 4. --skip-existing skips only days scored by the run's model version.


@pytest.mark.slow
def test_skip_existing_rescores_days_published_by_another_model_version(three_days, bundle, bundle_dir, tmp_path):
    paths = _copy(three_days, tmp_path)
    days = DAYS[:2]
    assert execute(run_config(paths, bundle_dir), days, [], backfill=True) == 0
    first = {d: read_manifest(f"{paths['output']}/dt={d}")["run_id"] for d in days}
    # The same model again: every day is skipped.
    assert execute(run_config(paths, bundle_dir, skip_existing=True), days, [], backfill=True) == 0
    assert {d: read_manifest(f"{paths['output']}/dt={d}")["run_id"] for d in days} == first
    # A new model: every day is scored again, by it.
    new_model = tmp_path / "model-v2"
    version = retrained_bundle(bundle, new_model)
    assert execute(run_config(paths, new_model, skip_existing=True), days, [], backfill=True) == 0
    for day in days:
        manifest = read_manifest(f"{paths['output']}/dt={day}")
        assert manifest["model_version"] == version and manifest["run_id"] != first[day]


def test_no_skip_existing_overrides_the_config_on_the_command_line(tmp_path):
    from pipeline.cli.main import _overrides, build_parser

    args, _ = build_parser().parse_known_args(["backfill", "--start", DAYS[0], "--end", DAYS[1], "--no-skip-existing"])
    assert _overrides(args)["skip_existing"] is False
    args, _ = build_parser().parse_known_args(["backfill", "--start", DAYS[0], "--end", DAYS[1], "--skip-existing"])
    assert _overrides(args)["skip_existing"] is True
    args, _ = build_parser().parse_known_args(["backfill", "--start", DAYS[0], "--end", DAYS[1]])
    assert "skip_existing" not in _overrides(args)  # the config decides


# ---------------------------------------------------------------------------------------------------------------------
# 6. One output root holds one layout.


@pytest.mark.slow
def test_a_run_without_date_into_a_dated_root_is_refused_and_the_reverse(three_days, bundle_dir, tmp_path, capsys):
    paths = _copy(three_days, tmp_path)
    assert execute(run_config(paths, bundle_dir, date=DAYS[0]), [DAYS[0]], []) == 0
    undated = dict(paths, reviews=f"{paths['reviews']}/dt={DAYS[1]}")
    with pytest.raises(ConfigError, match=f"output {paths['output']} holds dt= partitions"):
        execute(run_config(undated, bundle_dir), None, [])
    assert sorted(os.listdir(paths["output"])) == [f"dt={DAYS[0]}"]
    # The reverse: a dated run into a root holding an unpartitioned output.
    flat = dict(undated, output=str(tmp_path / "flat"))
    assert execute(run_config(flat, bundle_dir), None, []) == 0
    with pytest.raises(ConfigError, match=f"output {flat['output']} holds an unpartitioned output"):
        execute(run_config(dict(paths, output=flat["output"]), bundle_dir, date=DAYS[0]), [DAYS[0]], [])
    assert not glob.glob(f"{flat['output']}/dt=*")


def test_the_layout_refusal_exits_2_from_the_command_line(tmp_path, capsys, bundle_dir):
    out = tmp_path / "out"
    os.makedirs(out / "dt=2026-01-01")
    (out / "dt=2026-01-01" / "_SUCCESS").write_text("{}")
    code = main(
        [
            "score",
            "--customers",
            str(tmp_path / "c"),
            "--reviews",
            str(tmp_path / "r"),
            "--model-dir",
            str(bundle_dir),
            "--output",
            str(out),
            "--runner=FnApiRunner",
        ]
    )
    assert code == 2 and "holds dt= partitions" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# 9. Dates are YYYY-MM-DD only. The one home of the job's date spelling: the check itself, each command, the config.


@pytest.mark.parametrize(
    "spelling",
    [
        "20261126",
        "2026-W48-4",
        "2026-11-26T00:00",
        "2026-11-31",
        "2026-02-30",
        "2026-13-01",
        "26-11-2026",
        "28/11/2026",
        "",
    ],
)
def test_a_date_in_any_other_spelling_is_refused(spelling):
    with pytest.raises(ConfigError, match="must be a date YYYY-MM-DD"):
        validate_date(spelling, "--date")


def test_a_date_with_dashes_is_accepted_as_it_is():
    assert validate_date("2026-11-26", "--date") == "2026-11-26"


@pytest.mark.parametrize(
    "command",
    [
        ["score", "--date", "20261126"],
        ["backfill", "--start", "20261126", "--end", "2026-11-27"],
        ["verify", "--output", "o", "--date", "20261126"],
    ],
)
def test_a_date_without_dashes_exits_2_on_every_command(command, capsys):
    assert main(command) == 2
    assert "must be a date YYYY-MM-DD, got '20261126'" in capsys.readouterr().err


def test_a_date_without_dashes_in_a_config_file_is_refused():
    with pytest.raises(ConfigError, match="must be a date YYYY-MM-DD"):
        build_config({"date": "20261126"})


# ---------------------------------------------------------------------------------------------------------------------
# 10. An output equal to, inside or above an input is refused before anything is written.


@pytest.mark.parametrize(
    "where",
    ["reviews-day", "reviews-root", "inside-reviews", "above-reviews", "customers", "inside-customers-glob", "model"],
)
def test_an_output_that_overlaps_an_input_is_refused_before_anything_is_written(
    three_days, bundle_dir, tmp_path, where
):
    paths = _copy(three_days, tmp_path)
    model = tmp_path / "model"
    shutil.copytree(bundle_dir, model)
    before = sorted(glob.glob(f"{tmp_path}/**", recursive=True))
    output = {
        "reviews-day": f"{paths['reviews']}/dt={BAD_DAY}",
        "reviews-root": paths["reviews"],
        "inside-reviews": f"{paths['reviews']}/scores",
        "above-reviews": str(tmp_path / "in"),
        "customers": paths["customers"],
        "inside-customers-glob": f"{paths['customers']}/out",
        "model": str(model / "scores"),
    }[where]
    customers = f"{paths['customers']}/*.parquet" if where == "inside-customers-glob" else paths["customers"]
    config = run_config(dict(paths, output=output, customers=customers), model, date=BAD_DAY)
    with pytest.raises(ConfigError, match="setting 'output' .* (is|is inside|holds) the .* input"):
        execute(config, [BAD_DAY], [])
    assert sorted(glob.glob(f"{tmp_path}/**", recursive=True)) == before


def test_an_output_beside_the_inputs_is_accepted(three_days, bundle_dir, tmp_path):
    """The twin: a sibling whose name starts like an input's is not inside it."""
    from pipeline.run.plan import _check_output_apart

    paths = _copy(three_days, tmp_path)
    _check_output_apart(run_config(dict(paths, output=paths["reviews"] + "-scores"), bundle_dir))


# ---------------------------------------------------------------------------------------------------------------------
# 13. An id outside int64 fails its partition naming the file and the column.


def _uint64_ids(path: str, largest: int) -> None:
    table = pq.read_table(path)
    ids = pa.array(range(largest - table.num_rows + 1, largest + 1), pa.uint64())
    pq.write_table(table.set_column(table.column_names.index("review_id"), "review_id", ids), path)


@pytest.mark.slow
def test_a_uint64_id_beyond_int64_fails_its_day_naming_file_and_column(three_days, bundle_dir, tmp_path, capsys):
    paths = _copy(three_days, tmp_path)
    bad = _day_file(paths, BAD_DAY)
    _uint64_ids(bad, 2**63 + 5)
    _uint64_ids(_day_file(paths, DAYS[0]), 2**63 - 1)  # the twin: uint64 ids that fit int64 score as usual
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir), DAYS, [], backfill=True) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sentiment-score: error: 1 of 3 partition(s) not published") and f"dt={BAD_DAY}" in last
    with open(last.rsplit("run summary ", 1)[1], encoding="utf-8") as f:
        failed = [p for p in json.load(f)["partitions"] if p["partition"] == BAD_DAY][0]
    assert bad in failed["message"] and "column 'review_id' (uint64) does not fit int64" in failed["message"]
    for day in (DAYS[0], DAYS[2]):
        assert check_partition(f"{paths['output']}/dt={day}").complete
    scores = pq.read_table(glob.glob(f"{paths['output']}/dt={DAYS[0]}/scores-*.parquet"))
    assert pa.compute.max(scores["review_id"]).as_py() == 2**63 - 1


# ---------------------------------------------------------------------------------------------------------------------
# 7. A run removes only the staging of partitions whose lease it holds (the s3:// case is in test_object_store.py).


@pytest.mark.slow
def test_a_run_without_date_leaves_a_live_dated_runs_staging_alone(three_days, bundle_dir, tmp_path):
    import time

    from pipeline.publish import lease

    paths = _copy(three_days, tmp_path)
    control = paths["output"] + ".staging"
    lease.acquire(ParquetFolders.lease_folder(control, BAD_DAY), "live-run", time.time(), 3600)
    live = f"{control}/live-run/dt={BAD_DAY}/scores-live-run-0.parquet"
    dead = f"{control}/dead-run/_output/scores-dead-run-0.parquet"
    for path in (live, dead):
        os.makedirs(os.path.dirname(path))
        open(path, "wb").close()
    undated = dict(paths, reviews=f"{paths['reviews']}/dt={DAYS[0]}")
    assert execute(run_config(undated, bundle_dir), None, []) == 0
    assert os.path.exists(live) and not os.path.exists(dead)


# ---------------------------------------------------------------------------------------------------------------------
# 12. A run summary that cannot be written is one line naming the path, not a traceback.


@pytest.mark.slow
def test_an_unwritable_run_summary_is_one_line_and_the_lease_is_given_back(three_days, bundle_dir, tmp_path, capsys):
    from pipeline.publish import lease

    paths = _copy(three_days, tmp_path)
    control = paths["output"] + ".staging"
    os.makedirs(control)
    with open(f"{control}/_runs", "w") as f:  # a file where the run records' folder belongs
        f.write("in the way")
    capsys.readouterr()
    assert execute(run_config(paths, bundle_dir), DAYS[:2], [], backfill=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sentiment-score: error: cannot write the run summary:"), err
    assert f"{control}/_runs/" in err[0]
    for day in DAYS[:2]:  # the days themselves were published, and their leases given back
        assert check_partition(f"{paths['output']}/dt={day}").complete
        assert lease.current(ParquetFolders.lease_folder(control, day)).released
    assert not [p for p in glob.glob(f"{tmp_path}/**", recursive=True) if ".tmp-" in p]
