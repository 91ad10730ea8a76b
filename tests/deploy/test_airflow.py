"""Real Airflow 3 runs review_sentiment_daily: the run due after a day publishes exactly that day, failures fail it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.run.config import load_config
from tests.conftest import partition_summary

# Every test here is slow (make test-fast skips them) and an install (make test-quick skips them): real Airflow,
# installed into its own virtualenv on first use, running the DAG's tasks.
pytestmark = [pytest.mark.slow, pytest.mark.install]

REPO = Path(__file__).resolve().parents[2]
DAG_DIR = REPO / "deploy" / "airflow"
DAG_FILE = DAG_DIR / "review_sentiment_dag.py"
CONSTRAINTS = DAG_DIR / "constraints-airflow.txt"
PROBE = Path(__file__).with_name("airflow_probe.py")
DAG_ID = "review_sentiment_daily"
# Airflow's own virtualenv, cached at the repo root (gitignored) and rebuilt when the pins or Python change. Never
# the project's .venv: Airflow's pins clash with Beam's.
AIRFLOW_VENV = REPO / ".venv-airflow"
# Airflow, and its OpenLineage provider (the DAG passes the job its task run's id with the provider's macro).
AIRFLOW_REQUIREMENTS = ("apache-airflow>=3,<4", "apache-airflow-providers-openlineage>=2.20,<3")
# The DAG's first scheduled day; the test's day is drawn from the three years after it.
DAG_START = date(2026, 11, 1)

# A cluster policy (Airflow's own hook for changing tasks as DAG files are parsed) that keeps every retry of the
# real DAG but waits 1 s instead of minutes between attempts, so the failing run goes through all its tries here.
FAST_RETRIES_POLICY = '''"""Test-only cluster policy: the DAG's retries, without the minutes of waiting between them."""
import os
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds=1)
    if hasattr(task, "poke_interval"):
        task.poke_interval = 1
    if hasattr(task, "poke") and os.environ.get("TEST_SENSOR_TIMEOUT"):
        task.timeout = float(os.environ["TEST_SENSOR_TIMEOUT"])
'''


def _venv_key() -> str:
    """What the cached venv was built from: the pins, the requirement and the interpreter."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    digest.update(f"{AIRFLOW_REQUIREMENTS}\n{sys.version}\n{sys.base_prefix}".encode())
    return digest.hexdigest()


def _index_reachable(python: Path) -> tuple[bool, str]:
    """Whether pip can reach the package index at all (one look-up of one name)."""
    probe = subprocess.run(
        [str(python), "-m", "pip", "index", "versions", "apache-airflow"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (probe.stdout + probe.stderr).strip().splitlines()
    return probe.returncode == 0, lines[-1] if lines else ""


def _install_airflow() -> None:
    """A fresh venv with Airflow 3 at the pinned versions; the marker is written last, so a half-built venv is
    rebuilt. Skips only when no venv can be made or the package index cannot be reached."""
    shutil.rmtree(AIRFLOW_VENV, ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(AIRFLOW_VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a virtualenv for Airflow: {made.stderr.strip()}")
    python = AIRFLOW_VENV / "bin" / "python"
    started = time.monotonic()
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), *AIRFLOW_REQUIREMENTS],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if pip.returncode != 0:
        reachable, answer = _index_reachable(python)
        if not reachable:
            pytest.skip(f"Airflow cannot be installed: the package index is not reachable ({answer})")
        pytest.fail(f"pip could not install {AIRFLOW_REQUIREMENTS} with {CONSTRAINTS.name}:\n{pip.stderr[-3000:]}")
    (AIRFLOW_VENV / ".installed").write_text(f"{_venv_key()}\ninstalled in {time.monotonic() - started:.0f} s\n")


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The interpreter of the cached Airflow venv, installed on first use (about a minute with a warm pip cache)."""
    with open(REPO / ".venv-airflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions in one checkout build it once
        marker = AIRFLOW_VENV / ".installed"
        if not marker.exists() or marker.read_text().splitlines()[0] != _venv_key():
            _install_airflow()
    return AIRFLOW_VENV / "bin" / "python"


def airflow_env(home: Path, config: Path | None = None, fast_retries: bool = False, **sentiment) -> dict[str, str]:
    """An Airflow home of its own (sqlite, this repo's deploy/airflow as the DAGs folder) and the DAG's settings.

    Scoring runs as the DAG runs it in production, only on DirectRunner: SENTIMENT_PYTHON is this test's
    interpreter and SENTIMENT_HOME this checkout. No PYTHON* variables reach Airflow: its interpreter must not
    see this repo's packages, and the scoring command finds them as production does, from SENTIMENT_HOME.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "SENTIMENT_"))}
    home.mkdir(parents=True, exist_ok=True)
    if fast_retries:
        (home / "config").mkdir(exist_ok=True)
        (home / "config" / "airflow_local_settings.py").write_text(FAST_RETRIES_POLICY)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAG_DIR),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        SENTIMENT_HOME=str(REPO),
        SENTIMENT_PYTHON=sys.executable,
        SENTIMENT_RUNNER="DirectRunner",
    )
    if config is not None:
        env["SENTIMENT_CONFIG"] = str(config)
    env.update(sentiment)
    return env


def run_airflow(python: Path, env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python.parent / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def probe(python: Path, env: dict, *args: str):
    """Ask real Airflow (tests/deploy/airflow_probe.py under Airflow's interpreter); returns its JSON answer."""
    result = subprocess.run(
        [str(python), str(PROBE), *args], env=env, capture_output=True, text=True, timeout=300, cwd=env["AIRFLOW_HOME"]
    )
    answers = [line for line in result.stdout.splitlines() if line.startswith("PROBE-ANSWER ")]
    assert result.returncode == 0 and answers, f"probe {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(answers[-1].removeprefix("PROBE-ANSWER "))


def dags_test(python: Path, env: dict, when: str) -> subprocess.CompletedProcess:
    """A migrated sqlite DB, then `airflow dags test` for one date, as an operator would run it."""
    migrated = run_airflow(python, env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return run_airflow(python, env, "dags", "test", DAG_ID, when)


def write_config(path: Path, sample: Path, model_dir: Path, output: Path) -> Path:
    path.write_text(
        f"customers: {sample / 'customers'}\n"
        f"reviews: {sample / 'reviews'}\n"
        f"model_dir: {model_dir}\n"
        f"output: {output}\n"
        "beam:\n  runner: DataflowRunner   # the DAG's SENTIMENT_RUNNER must win\n"
    )
    return path


def partitions(output: Path) -> list[str]:
    return sorted(p.name for p in output.glob("dt=*")) if output.exists() else []


@pytest.fixture(scope="module")
def scoring_day() -> date:
    """A day nobody picked by hand, drawn from the DAG's first three years by a seeded generator, so every run (and a
    failure's replay) scores the same day; SCORING_DAY_SEED=N draws another one, to explore."""
    seed = int(os.environ.get("SCORING_DAY_SEED", "28"))
    day = DAG_START + timedelta(days=random.Random(seed).randrange(3 * 365))
    print(f"scoring day {day} (SCORING_DAY_SEED={seed})")
    return day


@pytest.fixture(scope="module")
def sample_days(tmp_path_factory, scoring_day):
    """Sample reviews for the day before, the day itself and the day after: scoring a wrong day publishes it."""
    from pipeline.training.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("airflow-sample")
    write_sample_data(str(root), reviews=600, days=3, seed=17, end_date=(scoring_day + timedelta(days=1)).isoformat())
    return root


def test_the_run_due_after_a_day_publishes_exactly_that_day(
    airflow_python, sample_days, bundle_dir, scoring_day, tmp_path
):
    output = tmp_path / "scores"
    env = airflow_env(tmp_path / "airflow", write_config(tmp_path / "config.yaml", sample_days, bundle_dir, output))
    day = scoring_day.isoformat()

    # The scheduler's run that becomes due once the day has ended, from the DAG's real timetable.
    due = probe(airflow_python, env, "due-after", str(DAG_FILE), day)
    assert due["run_after"] == f"{scoring_day + timedelta(days=1)}T00:00:00+00:00", due

    # `dags test DATE` runs a manual run whose data interval Airflow infers from DATE as the scheduler's due time.
    started = time.monotonic()
    result = dags_test(airflow_python, env, due["run_after"])
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    print(f"airflow dags test took {time.monotonic() - started:.1f} s")

    (run,) = probe(airflow_python, env, "runs")
    assert run["state"] == "success"
    # The same data interval as the scheduled run: the DAG renders the same date for both.
    assert run["data_interval"] == due["data_interval"]
    assert run["tasks"] == {
        "wait_for_input": {"state": "success", "try_number": 1},
        "score_reviews": {"state": "success", "try_number": 1},
        "verify_partition": {"state": "success", "try_number": 1},
    }

    assert partitions(output) == [f"dt={day}"]
    assert f"OK {output}/dt={day}: complete" in result.stdout  # verify's own line, logged by the sensor
    published = output / f"dt={day}"
    assert (published / "_SUCCESS").exists()
    summary = partition_summary(published)
    day_files = sorted((sample_days / "reviews" / f"dt={day}").glob("*.parquet"))
    assert summary["rows"]["read"] == sum(pq.ParquetFile(f).metadata.num_rows for f in day_files) > 0
    assert summary["input_files"]["reviews"] == [str(f) for f in day_files]


def test_a_missing_bundle_fails_the_run_and_publishes_nothing(airflow_python, sample_days, scoring_day, tmp_path):
    output = tmp_path / "scores"
    config = write_config(tmp_path / "config.yaml", sample_days, tmp_path / "no-such-bundle", output)
    env = airflow_env(tmp_path / "airflow", config, fast_retries=True)
    due = f"{scoring_day + timedelta(days=1)}T00:00:00+00:00"

    result = dags_test(airflow_python, env, due)
    assert result.returncode != 0
    assert "DagRun failed" in result.stderr + result.stdout
    assert "no-such-bundle" in result.stdout + result.stderr  # the job's own message reaches the task log

    (run,) = probe(airflow_python, env, "runs")
    assert run["state"] == "failed"
    # Every attempt ran and failed (the policy only shortened the waits); verify never ran.
    assert run["tasks"] == {
        "wait_for_input": {"state": "success", "try_number": 1},
        "score_reviews": {"state": "failed", "try_number": 3},
        "verify_partition": {"state": "upstream_failed", "try_number": 0},
    }
    assert partitions(output) == []
    assert not list(output.rglob("_SUCCESS")) if output.exists() else True


# Stand-in for SENTIMENT_PYTHON: every `score` finds the partition's lease held by another live run (exit 3,
# nothing started); `verify` finds the partition incomplete once (exit 1), then complete, as when the holder
# publishes in the meantime; `-c` (the DAG reading the config's output root) prints one. Every `-m` call is
# appended to $CALLS.
LEASE_HELD_PYTHON = """#!/usr/bin/env bash
if [ "$2" = pipeline.cli.input_ready ]; then echo "ready: dt=$6/part-0.parquet"; exit 0; fi  # the input is there
echo "$*" >> "$CALLS"
case "$3" in
  score) echo "sentiment-score: error: dt=$7 is leased by run 20261201T000000Z-holder; not starting" >&2; exit 3 ;;
  verify) if [ -e "$CALLS.verified" ]; then echo complete; exit 0; fi; touch "$CALLS.verified"; exit 1 ;;
esac
exit 2
"""


def test_a_held_lease_skips_scoring_and_waits_for_the_holder(airflow_python, scoring_day, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text(LEASE_HELD_PYTHON)
    fake_python.chmod(0o755)
    calls = tmp_path / "calls"
    env = airflow_env(
        tmp_path / "airflow", tmp_path / "config.yaml", fast_retries=True, SENTIMENT_PYTHON=str(fake_python)
    )
    env["CALLS"] = str(calls)
    day = scoring_day.isoformat()

    result = dags_test(airflow_python, env, f"{scoring_day + timedelta(days=1)}T00:00:00+00:00")
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "is leased by run 20261201T000000Z-holder" in result.stdout + result.stderr

    (run,) = probe(airflow_python, env, "runs")
    assert run["state"] == "success"
    assert run["tasks"]["score_reviews"] == {"state": "skipped", "try_number": 1}
    assert run["tasks"]["verify_partition"]["state"] == "success"
    lines = calls.read_text().splitlines()
    # One score, never retried (a retry could have started a second job), then verify until complete.
    assert [line.split()[2] for line in lines] == ["score", "verify", "verify"]
    assert all(f"--date {day}" in line for line in lines)
    assert all(f"--config {tmp_path / 'config.yaml'}" in line for line in lines[1:])  # verify reads the job's config


def timeout_budget(tasks: dict) -> float:
    """Seconds the score -> verify chain may take at most: every try to its timeout, the retry delays between,
    and verify's whole wait plus its last check."""
    wait, score, verify = tasks["wait_for_input"], tasks["score_reviews"], tasks["verify_partition"]
    tries = score["retries"] + 1
    return (
        wait["sensor_timeout"] * (wait["retries"] + 1)
        + wait["execution_timeout"]
        + score["execution_timeout"] * tries
        + score["retry_delay"] * score["retries"]
        + verify["sensor_timeout"] * (verify["retries"] + 1)
        + verify["retry_delay"] * verify["retries"]
        + verify["execution_timeout"]
    )


def test_defaults_run_dataflow_from_the_checkout_and_the_timeouts_add_up(airflow_python, tmp_path):
    env = airflow_env(tmp_path / "airflow")
    for name in ("SENTIMENT_HOME", "SENTIMENT_PYTHON", "SENTIMENT_RUNNER", "SENTIMENT_CONFIG"):
        env.pop(name, None)
    facts = probe(airflow_python, env, "dag-facts", str(DAG_FILE))

    assert facts["timetable"] == "CronDataIntervalTimetable"
    assert (facts["catchup"], facts["max_active_runs"]) == (True, 1)
    score, verify = facts["tasks"]["score_reviews"], facts["tasks"]["verify_partition"]
    assert score["cwd"] == "/opt/sentiment"
    assert score["bash_command"].startswith(
        "exec /opt/sentiment/.venv/bin/python -m pipeline score --config /opt/sentiment/configs/dataflow.yaml "
        "--date {{ data_interval_start | ds }} --runner=DataflowRunner"
    )
    assert score["skip_on_exit_code"] == [3]
    assert score["operator"] == "ScoreOperator"  # exit 2 (usage or config) fails without retries
    assert score["bash_command"].endswith("--no-wait")  # no OpenLineage transport configured: no parent passed
    wait = facts["tasks"]["wait_for_input"]
    assert (wait["mode"], wait["retry_exit_code"], wait["retries"]) == ("reschedule", 1, 0)
    assert 0 < wait["sensor_timeout"] <= 24 * 3600 and wait["execution_timeout"]
    assert wait["bash_command"] == (
        "cd /opt/sentiment && exec /opt/sentiment/.venv/bin/python -m pipeline.cli.input_ready "
        "--config /opt/sentiment/configs/dataflow.yaml --date {{ data_interval_start | ds }}"
    )
    assert score["upstream"] == ["wait_for_input"]
    assert (verify["upstream"], verify["trigger_rule"]) == (["score_reviews"], "none_failed")
    assert verify["bash_command"].endswith(  # the job's own config: its output, format (Parquet, Iceberg), catalog
        "exec /opt/sentiment/.venv/bin/python -m pipeline verify --config /opt/sentiment/configs/dataflow.yaml "
        "--date {{ data_interval_start | ds }}"
    )

    assert score["retries"] == 2 and score["execution_timeout"] and score["retry_delay"]
    assert timeout_budget(facts["tasks"]) <= facts["dagrun_timeout"]
    # A scoring process never outlives its partition lease (a killed one keeps it until it expires).
    assert score["execution_timeout"] < load_config(str(REPO / "configs" / "dataflow.yaml")).lease_expiry_hours * 3600


def test_a_relative_config_is_relative_to_the_home(airflow_python, tmp_path):
    env = airflow_env(
        tmp_path / "airflow",
        SENTIMENT_HOME="/srv/sentiment",
        SENTIMENT_PYTHON="/usr/bin/python3",
        SENTIMENT_RUNNER="FlinkRunner",
        SENTIMENT_CONFIG="configs/flink.yaml",
    )
    score = probe(airflow_python, env, "dag-facts", str(DAG_FILE))["tasks"]["score_reviews"]
    assert score["cwd"] == "/srv/sentiment"
    assert score["bash_command"].startswith(
        "exec /usr/bin/python3 -m pipeline score --config /srv/sentiment/configs/flink.yaml "
        "--date {{ data_interval_start | ds }} --runner=FlinkRunner"
    )


# Stand-in for SENTIMENT_PYTHON whose `score` exits 2 (bad usage or config), as a config the job cannot load does;
# the input is there. Every call is appended to $CALLS.
USAGE_ERROR_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$2" = pipeline.cli.input_ready ]; then echo "ready"; exit 0; fi
echo "sentiment-score: config error: configs/x.yaml: unknown setting 'ouput'" >&2
exit 2
"""


def _fake_python(tmp_path, script: str):
    fake = tmp_path / "python"
    fake.write_text(script)
    fake.chmod(0o755)
    return fake


def test_a_config_error_fails_scoring_without_retries(airflow_python, scoring_day, tmp_path):
    calls = tmp_path / "calls"
    env = airflow_env(
        tmp_path / "airflow",
        tmp_path / "config.yaml",
        fast_retries=True,
        SENTIMENT_PYTHON=str(_fake_python(tmp_path, USAGE_ERROR_PYTHON)),
    )
    env["CALLS"] = str(calls)

    result = dags_test(airflow_python, env, f"{scoring_day + timedelta(days=1)}T00:00:00+00:00")
    assert result.returncode != 0
    assert "unknown setting 'ouput'" in result.stdout + result.stderr

    (run,) = probe(airflow_python, env, "runs")
    assert run["state"] == "failed"
    # One try, not three: its twin is test_a_missing_bundle_fails_the_run_and_publishes_nothing (exit 1, retried).
    assert run["tasks"]["score_reviews"] == {"state": "failed", "try_number": 1}
    assert [line.split()[1] for line in calls.read_text().splitlines()] == ["pipeline.cli.input_ready", "pipeline"]


def test_scoring_waits_for_the_days_input_and_gives_up_at_the_timeout(airflow_python, sample_days, tmp_path):
    output = tmp_path / "scores"
    config = write_config(tmp_path / "config.yaml", sample_days, tmp_path / "no-bundle-needed", output)
    env = airflow_env(tmp_path / "airflow", config, fast_retries=True, TEST_SENSOR_TIMEOUT="3")
    # A day long after the sample days: its dt= folder never appears.
    result = dags_test(airflow_python, env, "2029-10-01T00:00:00+00:00")
    assert result.returncode != 0
    assert "waiting: no _SUCCESS or *.parquet in" in result.stdout + result.stderr

    (run,) = probe(airflow_python, env, "runs")
    assert run["state"] == "failed"
    assert run["tasks"]["wait_for_input"]["state"] == "failed"
    assert run["tasks"]["score_reviews"]["state"] == "upstream_failed"
    assert partitions(output) == []


def test_the_jobs_lineage_hangs_under_the_airflow_task_run(
    airflow_python, sample_days, bundle_dir, scoring_day, tmp_path
):
    output = tmp_path / "scores"
    config = write_config(tmp_path / "config.yaml", sample_days, bundle_dir, output)
    job_events = tmp_path / "job-lineage.jsonl"
    config.write_text(config.read_text() + f"lineage_file: {job_events}\n")
    airflow_events = tmp_path / "airflow-lineage.jsonl"
    transport = {"type": "file", "log_file_path": str(airflow_events), "append": True}
    env = airflow_env(tmp_path / "airflow", config)
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(transport)
    env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "airflow-test"

    result = dags_test(airflow_python, env, f"{scoring_day + timedelta(days=1)}T00:00:00+00:00")
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    def events(path):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    task_runs = {e["run"]["runId"] for e in events(airflow_events) if e["job"]["name"] == f"{DAG_ID}.score_reviews"}
    start = events(job_events)[0]
    assert start["eventType"] == "START"
    parent = start["run"]["facets"]["parent"]
    assert (parent["job"]["namespace"], parent["job"]["name"]) == ("airflow-test", f"{DAG_ID}.score_reviews")
    assert task_runs == {parent["run"]["runId"]}
