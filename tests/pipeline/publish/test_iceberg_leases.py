"""Two real `score` processes on one Iceberg catalog through different outputs: the lease is the table's day, so the
second is refused while the first publishes, takes the day over only when told to, and the first, overtaken between
its two table commits, publishes nothing more. pyiceberg then reads exactly the rows of the run verify names."""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import subprocess
import sys

import pyarrow.dataset
import pytest
import yaml
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import EqualTo

from pipeline import failpoints
from pipeline.publish.factory import publisher_for
from pipeline.publish.parquet import check_partition
from pipeline.publish.publisher import PartitionFacts
from pipeline.run.launcher import execute
from tests.conftest import SAMPLE_DATE, sample_config
from tests.readers import assert_iceberg_readers_see

pytestmark = pytest.mark.slow


def _catalog(root) -> dict:
    return {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"}


def _settings(sample_dir, bundle_dir, output, catalog: dict | None, output_format: str = "iceberg") -> dict:
    settings = {
        "customers": str(sample_dir / "customers"),
        "reviews": str(sample_dir / "reviews"),
        "model_dir": str(bundle_dir),
        "output": str(output),
        "output_format": output_format,
        "runtime": "litert",
        "beam": {"runner": "FnApiRunner"},
    }
    return {**settings, "catalog": catalog} if output_format == "iceberg" else settings


def start_paused(tmp_path, settings: dict, point: str, log_path) -> subprocess.Popen:
    """`score` in a subprocess that stops itself (SIGSTOP) the first time it reaches a failpoint (a publish step, or
    `score.shard-written`); returned stopped there: waitpid(WUNTRACED) blocks until it stops, so nothing is raced or
    polled."""
    config = tmp_path / f"{os.path.basename(settings['output'])}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "pipeline", "score", "--config", str(config), "--date", SAMPLE_DATE]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", failpoints.ENV: f"{point}=1*sigstop"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        process.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the run ended ({process.returncode}) before {point}:\n{log_path.read_text()[-3000:]}")
    return process


def resume(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGCONT)
    return process.wait(timeout=300)


def day_rows(catalog: dict, table: str) -> int:
    properties = dict(catalog)
    loaded = load_catalog("sentiment", **properties).load_table(table)
    return loaded.scan(row_filter=EqualTo("dt", SAMPLE_DATE)).to_arrow().num_rows


def assert_published_by(publisher_output, catalog: dict, run_prefix: str | None = None) -> PartitionFacts:
    """verify's verdict on the day, and what pyiceberg reads: exactly the rows of the run verify names, every data
    file there. Returns the run's facts."""
    publisher = publisher_for(str(publisher_output), "iceberg", catalog)
    check = publisher.check(SAMPLE_DATE)
    assert check.complete, check.message
    rows = check.manifest.rows
    assert day_rows(catalog, "sentiment.review_scores") == rows.scored > 0
    assert day_rows(catalog, "sentiment.review_rejects") == rows.rejected
    assert_iceberg_readers_see(catalog, SAMPLE_DATE, rows.scored, rows.rejected)  # polars too
    return check.manifest


@pytest.fixture
def shared(tmp_path):
    return _catalog(tmp_path / "shared")


def test_a_second_output_on_the_same_catalog_waits_for_the_day_and_a_take_over_fences_the_first(
    tmp_path, sample_dir, bundle_dir, shared, capsys
):
    log = tmp_path / "a.log"
    first = start_paused(
        tmp_path, _settings(sample_dir, bundle_dir, tmp_path / "a", shared), "iceberg.rejects-committed", log
    )
    try:
        # The first run has replaced the rejects table's day and is about to commit the scores table's.
        second = sample_config(
            sample_dir,
            bundle_dir,
            tmp_path / "b",
            output_format="iceberg",
            catalog=shared,
            date=SAMPLE_DATE,
            runtime="litert",
        )
        assert execute(second, [SAMPLE_DATE], []) == 3
        err = capsys.readouterr().err
        assert f"table sentiment.review_rejects (catalog sentiment) dt={SAMPLE_DATE} is being written by run" in err
        assert "--take-over-lease" in err

        assert execute(second, [SAMPLE_DATE], [], take_over_lease=True) == 0
        taken_over = assert_published_by(tmp_path / "b", shared)
    finally:
        code = resume(first)
    assert code == 1, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert "not published" in last and "no longer holds the lease of table sentiment.review_" in last, last
    assert assert_published_by(tmp_path / "a", shared).run_id == taken_over.run_id  # the first left it whole


def test_outputs_with_their_own_catalogs_publish_the_same_day_at_once(tmp_path, sample_dir, bundle_dir):
    """The twin: another catalog is another table, so its lease is another lease: both runs publish."""
    log = tmp_path / "a.log"
    own = _catalog(tmp_path / "a-catalog")
    first = start_paused(
        tmp_path, _settings(sample_dir, bundle_dir, tmp_path / "a", own), "iceberg.rejects-committed", log
    )
    try:
        other = _catalog(tmp_path / "b-catalog")
        second = sample_config(
            sample_dir,
            bundle_dir,
            tmp_path / "b",
            output_format="iceberg",
            catalog=other,
            date=SAMPLE_DATE,
            runtime="litert",
        )
        assert execute(second, [SAMPLE_DATE], []) == 0
    finally:
        code = resume(first)
    assert code == 0, log.read_text()[-3000:]
    assert assert_published_by(tmp_path / "a", own).run_id != assert_published_by(tmp_path / "b", other).run_id


# ---------------------------------------------------------------------------------------------------------------------
# SIGTERM (a scheduler's timeout) while a run publishes: the last line says what was published and what verify says


def _stopped_by_sigterm(tmp_path, sample_dir, bundle_dir, point: str) -> str:
    """A run into the embedded catalog, stopped by SIGTERM at a failpoint of its publish; its last line."""
    log = tmp_path / "terminated.log"
    output = tmp_path / "out"
    process = start_paused(tmp_path, _settings(sample_dir, bundle_dir, output, None), point, log)
    try:
        process.send_signal(signal.SIGTERM)
        assert resume(process) == 1, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    text = log.read_text()
    assert "stopped by signal 15 (SIGTERM)" in text
    return text.strip().splitlines()[-1]


def test_a_run_stopped_between_its_two_table_commits_says_what_it_published_and_what_verify_reports(
    tmp_path, sample_dir, bundle_dir, capsys
):
    last = _stopped_by_sigterm(tmp_path, sample_dir, bundle_dir, "iceberg.rejects-committed")
    catalog = _catalog(tmp_path / "out")
    rejects = load_catalog("sentiment", **catalog).load_table("sentiment.review_rejects")
    run = rejects.current_snapshot().summary.additional_properties["sentiment.run-id"]
    assert "nothing was published" not in last, last
    assert f"run {run} published sentiment.review_rejects dt={SAMPLE_DATE}, not sentiment.review_scores" in last, last
    rejected = day_rows(catalog, "sentiment.review_rejects")
    assert rejected > 0 and day_rows(catalog, "sentiment.review_scores") == 0  # exactly what the line says
    assert_iceberg_readers_see(catalog, SAMPLE_DATE, 0, rejected)
    args = ["verify", "--output", str(tmp_path / "out"), "--output-format", "iceberg", "--date", SAMPLE_DATE]
    from pipeline.cli.main import main

    capsys.readouterr()
    assert main(args) == 1
    [verdict] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("INCOMPLETE ")]
    assert f"verify reports: {verdict}" in last, (last, verdict)


def test_a_run_stopped_before_its_first_commit_says_nothing_was_published(tmp_path, sample_dir, bundle_dir):
    """The twin: stopped after its shards moved into the tables' folders, before either commit."""
    last = _stopped_by_sigterm(tmp_path, sample_dir, bundle_dir, "iceberg.moved")
    assert last.endswith("nothing was published"), last
    catalog = _catalog(tmp_path / "out")
    assert day_rows(catalog, "sentiment.review_rejects") == day_rows(catalog, "sentiment.review_scores") == 0
    assert_iceberg_readers_see(catalog, SAMPLE_DATE, 0, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Parquet: the lease is the folder's real path


def test_a_parquet_run_through_a_symlink_waits_for_the_run_writing_the_real_folder(tmp_path, sample_dir, bundle_dir):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    log = tmp_path / "a.log"
    settings = _settings(sample_dir, bundle_dir, real, None, output_format="parquet")
    first = start_paused(tmp_path, settings, "score.shard-written", log)
    try:
        through_link = sample_config(sample_dir, bundle_dir, tmp_path / "link", date=SAMPLE_DATE, runtime="litert")
        assert execute(through_link, [SAMPLE_DATE], []) == 3  # it used to be 0: two runs in one folder at once
    finally:
        code = resume(first)
    assert code == 0, log.read_text()[-3000:]
    check = check_partition(str(real / f"dt={SAMPLE_DATE}"))
    assert check.complete, check.message
    scores = pyarrow.dataset.dataset(str(real), format="parquet", partitioning="hive").to_table()
    assert scores.num_rows == check.manifest.rows.scored  # a Hive reader sees exactly the published scores


def test_a_parquet_run_into_another_folder_goes_ahead(tmp_path, sample_dir, bundle_dir):
    """The twin: a different real folder is a different lease."""
    log = tmp_path / "a.log"
    settings = _settings(sample_dir, bundle_dir, tmp_path / "a", None, output_format="parquet")
    first = start_paused(tmp_path, settings, "score.shard-written", log)
    try:
        other = sample_config(sample_dir, bundle_dir, tmp_path / "b", date=SAMPLE_DATE, runtime="litert")
        assert execute(other, [SAMPLE_DATE], []) == 0
    finally:
        code = resume(first)
    assert code == 0, log.read_text()[-3000:]
    for output in ("a", "b"):
        assert check_partition(str(tmp_path / output / f"dt={SAMPLE_DATE}")).complete


# ---------------------------------------------------------------------------------------------------------------------
# An unreadable newest lease (a torn write, a disk fault): --take-over-lease takes the day


def _corrupt_a_days_lease(tmp_path, sample_dir, bundle_dir):
    """A run that published the day, then its newest lease of the scores table's day overwritten with half a record."""
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", output_format="iceberg", date=SAMPLE_DATE)
    config = dataclasses.replace(config, runtime="litert")
    assert execute(config, [SAMPLE_DATE], []) == 0
    scores = next(
        s for s in publisher_for(str(tmp_path / "out"), "iceberg").lease_scopes(SAMPLE_DATE) if "scores" in s.fences
    )
    [newest] = sorted(glob.glob(f"{scores.directory}/lease-*.json"))[-1:]
    with open(newest, "w", encoding="utf-8") as f:
        f.write('{"run_id": "20261207T0')
    return config, newest


def test_take_over_lease_takes_a_day_whose_newest_lease_is_unreadable(tmp_path, sample_dir, bundle_dir, capsys):
    config, _ = _corrupt_a_days_lease(tmp_path, sample_dir, bundle_dir)
    assert execute(config, [SAMPLE_DATE], [], take_over_lease=True) == 0  # it used to exit 1 (LeaseError)
    assert_published_by(tmp_path / "out", _catalog(tmp_path / "out"))


def test_a_day_whose_newest_lease_is_unreadable_is_refused_without_take_over(tmp_path, sample_dir, bundle_dir, capsys):
    """The twin: whether its holder lives cannot be told, so the run stops at start-up naming the file and the flag."""
    config, newest = _corrupt_a_days_lease(tmp_path, sample_dir, bundle_dir)
    capsys.readouterr()
    assert execute(config, [SAMPLE_DATE], []) == 1
    err = capsys.readouterr().err
    assert f"{newest}: unreadable lease" in err and "pass --take-over-lease" in err
