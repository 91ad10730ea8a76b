"""`--dry-run` over the sample data against what the real run then does, backfill progress, the no-op rerun's
lines, and `verify` of every partition found, through the installed `sentiment-score`."""

import json
import os
import re
import shutil

import pytest

from tests.pipeline.test_command_line import sentiment_score

DAYS = ("2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28")  # no input, a bad file, published before, new
DAY_LINE = re.compile(r"^\s+dt=(\S+)\s+(score|skip|refuse)\s+(.*)$")


def _tree(*roots) -> dict:
    """Every file below the roots with its size and mtime: what a run that writes nothing leaves unchanged."""
    found = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                stat = os.stat(path)
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def planned(stdout: str) -> dict[str, tuple[str, str]]:
    """{day: (action, rest of the line)} from a dry run's day lines."""
    return {m[1]: (m[2], m[3]) for m in map(DAY_LINE.match, stdout.splitlines()) if m}


def published(stdout: str, output) -> dict[str, int]:
    """{day: rows read} from a real run's per-partition lines."""
    pattern = re.compile(rf"^{re.escape(str(output))}/dt=(\S+): read (\d+), ")
    return {m[1]: int(m[2]) for m in map(pattern.match, stdout.splitlines()) if m}


@pytest.fixture(scope="module")
def runs(sample_dir, bundle_dir, tmp_path_factory):
    """Day 27 scored first; then a dry run of the backfill 25..28 with --skip-existing, the real backfill, and the
    same backfill of the published days once more."""
    root = tmp_path_factory.mktemp("dry")
    shutil.copytree(sample_dir / "customers", root / "customers")
    shutil.copytree(sample_dir / "reviews", root / "reviews")
    (root / "reviews" / "dt=2026-11-26").mkdir()
    (root / "reviews" / "dt=2026-11-26" / "part-0.parquet").write_bytes(b"not parquet at all")
    output = root / "out"
    config = root / "config.yaml"
    config.write_text(
        f"customers: {root / 'customers'}\nreviews: {root / 'reviews'}\nmodel_dir: {bundle_dir}\n"
        f"output: {output}\nbackfill_chunk_days: 1\nbeam: {{runner: FnApiRunner}}\n"
    )
    first = sentiment_score("score", "--config", str(config), "--date", "2026-11-27", cwd=root)
    assert first.returncode == 0, first.stderr
    with open(output / "dt=2026-11-27" / "_SUCCESS") as f:
        first_run = json.load(f)["run_id"]
    backfill = ["backfill", "--config", str(config), "--start", DAYS[0], "--end", DAYS[-1], "--skip-existing"]
    before = _tree(root)
    dry = sentiment_score(*backfill, "--dry-run", "--metrics-file", str(root / "m.prom"), cwd=root)
    after = _tree(root)
    real = sentiment_score(*backfill, cwd=root)
    again = sentiment_score(*backfill[:3], "--start", DAYS[2], "--end", DAYS[3], "--skip-existing", cwd=root)
    return {
        "root": root,
        "output": output,
        "config": config,
        "first_run": first_run,
        "dry": dry,
        "unchanged": before == after,
        "real": real,
        "again": again,
    }


@pytest.mark.slow
def test_a_dry_run_prints_each_day_its_files_rows_and_fate(runs, sample_dir):
    dry = runs["dry"]
    assert dry.returncode == 0, dry.stderr
    plan = planned(dry.stdout)
    assert {day: action for day, (action, _) in plan.items()} == {
        "2026-11-25": "skip",
        "2026-11-26": "refuse",
        "2026-11-27": "skip",
        "2026-11-28": "score",
    }
    assert plan["2026-11-25"][1].startswith("no review files in ")
    assert "not a readable Parquet file" in plan["2026-11-26"][1]
    assert plan["2026-11-27"][1].startswith("already published, complete and scored by model ")
    assert re.fullmatch(rf"\d+ rows in 1 file\(s\) -> {re.escape(str(runs['output']))}/dt=2026-11-28", plan[DAYS[3]][1])
    assert f"{runs['root']}/reviews/dt=2026-11-28/" in dry.stdout  # the day's input file, with its rows
    assert f"publisher: parquet folders under {runs['output']}" in dry.stdout
    assert "chunk 1 of 1: 2026-11-28 .. 2026-11-28 (1 day(s), " in dry.stdout
    assert "Nothing was written and no lease was taken." in dry.stdout


@pytest.mark.slow
def test_a_dry_run_writes_nothing_takes_no_lease_and_writes_no_metrics(runs):
    assert runs["unchanged"]
    assert not (runs["root"] / "m.prom").exists()


@pytest.mark.slow
def test_the_real_backfill_does_what_the_dry_run_planned(runs):
    plan, real = planned(runs["dry"].stdout), runs["real"]
    assert real.returncode == 1  # the refused day fails the run, as the plan said; the others are published
    rows = {day: int(rest.split()[0]) for day, (action, rest) in plan.items() if action == "score"}
    assert published(real.stdout, runs["output"]) == rows
    refused = [day for day, (action, _) in plan.items() if action == "refuse"]
    assert refused == ["2026-11-26"] and "dt=2026-11-26 (refused at start-up:" in real.stderr
    with open(runs["output"] / "dt=2026-11-27" / "_SUCCESS") as f:  # skipped as planned: not rescored
        assert json.load(f)["run_id"] == runs["first_run"]
    assert not (runs["output"] / "dt=2026-11-25").exists()


@pytest.mark.slow
def test_the_run_names_already_published_and_no_input_days_apart_in_one_line_each(runs):
    err = runs["real"].stderr
    assert re.search(r"INFO sentiment-score: 1 of 4 day\(s\) already published by model \S+, skipped", err)
    assert "WARNING sentiment-score: 1 of 4 day(s) have no review files (no input), skipped: 2026-11-25" in err
    assert "skipping dt=" not in err


@pytest.mark.slow
def test_a_no_op_rerun_is_one_info_line_and_exit_0(runs):
    again = runs["again"]
    assert again.returncode == 0, again.stderr
    assert re.fullmatch(r"nothing to score: 2 of 2 day\(s\) already published by model \S+\n", again.stdout)
    assert " WARNING " not in again.stderr
    assert len(re.findall(r"INFO sentiment-score: 2 of 2 day\(s\) already published", again.stderr)) == 1


@pytest.mark.slow
def test_a_dry_run_the_run_would_refuse_exits_2_and_writes_nothing(runs, tmp_path):
    # an output inside the reviews input: refused at start-up
    inside = runs["root"] / "reviews" / "out"
    before = _tree(runs["root"])
    result = sentiment_score(
        "score", "--config", str(runs["config"]), "--date", DAYS[3], "--output", str(inside), "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "is inside the reviews input" in result.stderr
    assert "the run would be refused (exit 2)" in result.stdout
    assert _tree(runs["root"]) == before


@pytest.mark.slow
def test_backfill_progress_names_every_chunk_of_the_total_and_rows_left(runs, tmp_path):
    result = sentiment_score(
        "backfill",
        "--config",
        str(runs["config"]),
        "--start",
        DAYS[2],
        "--end",
        DAYS[3],
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "chunk 1 of 2: 2026-11-27 .. 2026-11-27 (1 day(s), " in result.stderr
    assert "chunk 2 of 2: 2026-11-28 .. 2026-11-28 (1 day(s), " in result.stderr
    first = re.search(
        r"backfill progress: 1 of 2 chunk\(s\) done, (\d+) of (\d+) rows \(\d+%\) in \S+, about \S+ left", result.stderr
    )
    assert first, result.stderr
    assert re.search(
        r"backfill progress: 2 of 2 chunk\(s\) done, (\d+) of \1 rows \(100%\) in \S+, nothing left", result.stderr
    )


def test_progress_estimates_the_time_left_from_the_chunks_done():
    from pipeline.run.progress import BackfillProgress, chunks

    times = iter([100.0, 130.0, 190.0])
    progress = BackfillProgress(chunks(["a", "b", "c"], 2), {"a": 100, "b": 200, "c": 300}, clock=lambda: next(times))
    assert progress.finished(0) == (
        "backfill progress: 1 of 2 chunk(s) done, 300 of 600 rows (50%) in 30s, about 30s left"
    )
    assert progress.finished(1).endswith("600 of 600 rows (100%) in 1m30s, nothing left")


def test_progress_before_any_rows_says_the_time_left_is_unknown():
    from pipeline.run.progress import BackfillProgress, chunk_label

    progress = BackfillProgress([["a"], ["b"]], {"a": 0, "b": 10}, clock=lambda: 5.0)
    assert progress.finished(0).endswith("0 of 10 rows (0%) in 0s, time left unknown")
    assert chunk_label(1, 5, ["2026-01-08", "2026-01-14"]) == "chunk 2 of 5: 2026-01-08 .. 2026-01-14"


# --- verify: every partition found, no such output ---


@pytest.mark.slow
def test_verify_without_a_date_checks_every_partition_of_a_dated_root(runs):
    result = sentiment_score("verify", "--output", str(runs["output"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"verify: 2 partition(s) found in {runs['output']}: 2026-11-27 .. 2026-11-28" in result.stdout
    assert result.stdout.count("OK ") == 2 and "verify: all 2 partition(s) complete" in result.stdout


@pytest.mark.slow
def test_verify_without_a_date_names_the_incomplete_partition_among_those_found(runs, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(runs["output"], copy)
    shard = sorted((copy / "dt=2026-11-28").glob("scores-*.parquet"))[0]
    shard.unlink()
    result = sentiment_score("verify", "--output", str(copy))
    assert result.returncode == 1
    assert f"{shard.name} is missing" in result.stdout
    assert f"verify: 1 of 2 partition(s) incomplete: {copy}/dt=2026-11-28" in result.stdout


@pytest.mark.slow
def test_verify_of_a_missing_root_is_no_such_output_exit_2(tmp_path):
    result = sentiment_score("verify", "--output", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"no such output: {tmp_path / 'nowhere'} holds no published parquet partition" in result.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_verify_of_a_day_in_a_missing_root_is_not_published_yet_exit_1(tmp_path):
    # What the DAG's sensor asks right after a --no-wait submission: not there yet, check again (exit 1).
    result = sentiment_score("verify", "--output", str(tmp_path / "nowhere"), "--date", DAYS[3])
    assert result.returncode == 1
    assert "no such output yet" in result.stdout and "1 of 1 partition(s) incomplete" in result.stdout


@pytest.fixture(scope="module")
def iceberg_root(sample_dir, bundle_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("iceberg")
    args = ["score", "--customers", str(sample_dir / "customers"), "--reviews", str(sample_dir / "reviews")]
    args += ["--model-dir", str(bundle_dir), "--output", str(root / "out"), "--date", DAYS[3]]
    result = sentiment_score(*args, "--output-format", "iceberg", "--runner=FnApiRunner", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "out"


@pytest.mark.slow
def test_verify_as_parquet_of_an_iceberg_root_names_the_format_it_found(iceberg_root):
    before = sorted(p.name for p in iceberg_root.iterdir())
    result = sentiment_score("verify", "--output", str(iceberg_root), "--output-format", "parquet")
    assert result.returncode == 2
    assert f"output {iceberg_root} holds iceberg output, not parquet: verify it with --output-format iceberg" in (
        result.stderr
    )
    assert sorted(p.name for p in iceberg_root.iterdir()) == before


@pytest.mark.slow
def test_verify_as_iceberg_of_an_iceberg_root_checks_every_day_it_holds(iceberg_root):
    result = sentiment_score("verify", "--output", str(iceberg_root), "--output-format", "iceberg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"verify: 1 partition(s) found in {iceberg_root}: {DAYS[3]} .. {DAYS[3]}" in result.stdout
    assert f"OK {DAYS[3]}: complete: " in result.stdout


@pytest.mark.slow
def test_verify_as_iceberg_of_a_parquet_root_names_parquet(runs):
    result = sentiment_score("verify", "--output", str(runs["output"]), "--output-format", "iceberg")
    assert result.returncode == 2
    assert "holds parquet output, not iceberg" in result.stderr
    assert not (runs["output"] / "catalog.db").exists()
