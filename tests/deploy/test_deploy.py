"""Checks for deploy/: the cron wrapper, the launcher and the Flex Template files (the DAG runs in test_airflow.py)."""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRON_SCRIPT = DEPLOY / "cron" / "score-yesterday.sh"
CRONTAB = DEPLOY / "cron" / "crontab"
LAUNCHER = DEPLOY / "airflow" / "launch_score.py"
FLEX_DIR = DEPLOY / "flex-template"
FLEX_MAIN = FLEX_DIR / "main.py"
METADATA = FLEX_DIR / "metadata.json"

TEMPLATE_PARAMETERS = {"date", "customers", "reviews", "model_dir", "output", "config"}


def load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------- cron wrapper


@pytest.fixture
def fake_job(tmp_path):
    """A stand-in for `sentiment-score`: logs its argv, exits FAKE_RC.

    With FAKE_HOLD=1 it prints `started` on stdout and keeps running until a line (or EOF) arrives on its stdin, at
    most 30 s, so a test awaits its start and decides when it ends instead of racing a fixed sleep on a busy machine.
    """
    calls = tmp_path / "calls.log"
    script = tmp_path / "fake-sentiment-score"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        'if [[ "${FAKE_HOLD:-0}" == 1 ]]; then\n'
        "    echo started\n"
        "    read -r -t 30 _ || true\n"
        "fi\n"
        'exit "${FAKE_RC:-0}"\n'
    )
    script.chmod(0o755)
    return types.SimpleNamespace(path=script, calls=calls)


def wrapper_env(tmp_path, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SCORE_DATE", "DRY_RUN", "CONFIG", "SENTIMENT_SCORE"}}
    env["LOCK_FILE"] = str(tmp_path / "score.lock")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_wrapper(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CRON_SCRIPT), *args],
        env=wrapper_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_cron_wrapper_is_valid_bash_and_executable():
    subprocess.run(["bash", "-n", str(CRON_SCRIPT)], check=True, timeout=30)
    assert os.access(CRON_SCRIPT, os.X_OK)
    assert "set -euo pipefail" in CRON_SCRIPT.read_text()


def test_cron_wrapper_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(CRON_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_dry_run_prints_the_exact_command_for_score_date(tmp_path):
    result = run_wrapper(tmp_path, SCORE_DATE="2026-11-28", DRY_RUN=1)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "sentiment-score score --config configs/nightly.yaml --date 2026-11-28\n"
    assert not (tmp_path / "score.lock").exists(), "a dry run takes no lock"


@pytest.mark.slow
def test_dry_run_honours_overrides_and_quotes_extra_arguments(tmp_path):
    result = run_wrapper(
        tmp_path,
        "--output",
        "out dir",
        "--runner=DirectRunner",
        SCORE_DATE="2026-01-31",
        DRY_RUN=1,
        CONFIG="configs/backfill.yaml",
        SENTIMENT_SCORE="/opt/sentiment/.venv/bin/sentiment-score",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "/opt/sentiment/.venv/bin/sentiment-score score --config configs/backfill.yaml --date 2026-01-31"
        " --output out\\ dir --runner=DirectRunner\n"
    )


@pytest.mark.slow
def test_dry_run_without_score_date_uses_yesterday(tmp_path):
    # Local calendar day, as the script sees it; computed on both sides of the run in case midnight passes.
    before = datetime.now(UTC).astimezone().date() - timedelta(days=1)
    result = run_wrapper(tmp_path, DRY_RUN=1)
    after = datetime.now(UTC).astimezone().date() - timedelta(days=1)
    assert result.returncode == 0, result.stderr
    dates = {f"sentiment-score score --config configs/nightly.yaml --date {d.isoformat()}\n" for d in (before, after)}
    assert result.stdout in dates


@pytest.mark.parametrize("bad_date", ["2026/11/28", "2026-02-30", "yesterday", "2026-11-28; rm -rf /"])
@pytest.mark.slow
def test_bad_score_date_is_a_usage_error_and_runs_nothing(tmp_path, fake_job, bad_date):
    result = run_wrapper(tmp_path, SCORE_DATE=bad_date, SENTIMENT_SCORE=fake_job.path)
    assert result.returncode == 2
    assert "SCORE_DATE" in result.stderr
    assert not fake_job.calls.exists()


@pytest.mark.parametrize("job_rc", [0, 1, 2])
@pytest.mark.slow
def test_the_jobs_exit_code_is_propagated(tmp_path, fake_job, job_rc):
    result = run_wrapper(
        tmp_path, "--runner=DirectRunner", SCORE_DATE="2026-11-28", SENTIMENT_SCORE=fake_job.path, FAKE_RC=job_rc
    )
    assert result.returncode == job_rc
    assert fake_job.calls.read_text().splitlines() == [
        "score --config configs/nightly.yaml --date 2026-11-28 --runner=DirectRunner"
    ]
    log = result.stderr.splitlines()
    assert len(log) == 2
    stamp = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z score-yesterday\[\d+\]: "
    assert re.match(stamp + r"start date=2026-11-28 ", log[0])
    assert re.match(stamp + rf"end date=2026-11-28 exit={job_rc} elapsed=\d+s$", log[1])


@pytest.mark.slow
def test_lock_prevents_overlapping_runs(tmp_path, fake_job):
    lock = tmp_path / "score.lock"
    first = subprocess.Popen(
        [str(CRON_SCRIPT)],
        env=wrapper_env(tmp_path, SCORE_DATE="2026-11-27", SENTIMENT_SCORE=fake_job.path, FAKE_HOLD=1),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The job starts only once the wrapper holds the lock; it says so on the stdout it shares with the wrapper.
        ready, _, _ = select.select([first.stdout], [], [], 15)
        assert ready, "the first run never started its job"
        assert first.stdout.readline() == "started\n", first.communicate()

        second = run_wrapper(tmp_path, SCORE_DATE="2026-11-28", SENTIMENT_SCORE=fake_job.path)
        assert second.returncode == 75
        assert second.stderr == f"another run holds {lock}; exiting\n"
        assert second.stdout == ""
        assert first.poll() is None, "the second run must not disturb the first"

        _, first_err = first.communicate(input="release\n", timeout=30)
        assert first.returncode == 0, first_err
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()

    assert fake_job.calls.read_text().splitlines() == ["score --config configs/nightly.yaml --date 2026-11-27"]
    # The lock goes with the process: the next run gets it.
    third = run_wrapper(tmp_path, SCORE_DATE="2026-11-28", SENTIMENT_SCORE=fake_job.path)
    assert third.returncode == 0, third.stderr


@pytest.mark.slow
def test_an_unusable_lock_file_is_a_config_error(tmp_path, fake_job):
    result = run_wrapper(
        tmp_path, SCORE_DATE="2026-11-28", SENTIMENT_SCORE=fake_job.path, LOCK_FILE=tmp_path / "no-such-dir" / "x.lock"
    )
    assert result.returncode == 2
    assert "cannot open lock file" in result.stderr
    assert not fake_job.calls.exists()


def test_crontab_entry_runs_the_wrapper_nightly():
    entries = [
        line
        for line in CRONTAB.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^[A-Z_]+=", line)
    ]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    assert len(fields) == 6
    minute, hour, dom, month, dow, command = fields
    assert minute.isdigit() and 0 <= int(minute) < 60
    assert hour.isdigit() and 0 <= int(hour) < 24
    assert (dom, month, dow) == ("*", "*", "*")
    assert "deploy/cron/score-yesterday.sh" in command
    assert "%" not in command, "cron turns an unescaped % into a newline"


# --------------------------------------------------------------------------------------------------- launcher

AIRFLOW_ARGV = [
    "--runner=DataflowRunner",
    "--job_name=review-sentiment-20261128-4f1c2a9e",
    "--project=my-project",
    "--region=europe-west1",
    "--labels=airflow-version=v3-1-0",
    "--temp_location=gs://bucket/tmp",
    "--setup_file=/opt/sentiment/setup.py",
    "--config=configs/dataflow.yaml",
    "--date=2026-11-28",
]


@pytest.fixture(scope="module")
def launcher():
    return load_module(LAUNCHER, "launch_score_under_test")


def test_launcher_imports_the_cli_lazily():
    tree = ast.parse(LAUNCHER.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(m and m.split(".")[0] == "pipeline" for m in modules)


def test_launcher_maps_airflow_options_to_score_arguments(launcher):
    assert launcher.build_argv(AIRFLOW_ARGV) == [
        "score",
        "--config",
        "configs/dataflow.yaml",
        "--date",
        "2026-11-28",
        *AIRFLOW_ARGV[:7],
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Space-separated values; Beam flags keep their order and their values.
        (
            ["--date", "2026-11-28", "--runner", "DirectRunner", "--config", "configs/local.yaml"],
            ["score", "--config", "configs/local.yaml", "--date", "2026-11-28", "--runner", "DirectRunner"],
        ),
        # A leading "score" is not repeated.
        (["score", "--date=2026-11-28"], ["score", "--date", "2026-11-28"]),
        # model_dir and model-dir both become the CLI's --model-dir; every job flag in the CLI's order.
        (
            ["--model_dir=gs://b/m/", "--reviews=gs://b/r/", "--customers=gs://b/c/", "--output=gs://b/o/"],
            [
                "score",
                "--output",
                "gs://b/o/",
                "--customers",
                "gs://b/c/",
                "--reviews",
                "gs://b/r/",
                "--model-dir",
                "gs://b/m/",
            ],
        ),
        (["--model-dir", "gs://b/m/"], ["score", "--model-dir", "gs://b/m/"]),
        # An empty value means "not set", for job and Beam flags; a repeated flag keeps its last value.
        (["--output=", "--date=2026-11-27", "--date=2026-11-28"], ["score", "--date", "2026-11-28"]),
        (["--temp_location=", "--date=2026-11-28", "--region=r"], ["score", "--date", "2026-11-28", "--region=r"]),
        # Values containing "=" survive.
        (["--labels=team=ds", "--date=2026-11-28"], ["score", "--date", "2026-11-28", "--labels=team=ds"]),
    ],
)
def test_launcher_build_argv(launcher, argv, expected):
    assert launcher.build_argv(argv) == expected


def test_launcher_default_config_applies_only_without_config(launcher):
    assert launcher.build_argv(["--date=2026-11-28"], default_config="configs/dataflow.yaml")[:3] == [
        "score",
        "--config",
        "configs/dataflow.yaml",
    ]
    assert launcher.build_argv(["--config=configs/flink.yaml"], default_config="configs/dataflow.yaml") == [
        "score",
        "--config",
        "configs/flink.yaml",
    ]


@pytest.mark.parametrize("argv", [["--date"], ["--date", "--runner=DirectRunner"]])
def test_launcher_rejects_a_job_flag_without_value(launcher, argv, capsys):
    with pytest.raises(ValueError, match="--date needs a value"):
        launcher.build_argv(argv)
    assert launcher.main(argv) == 2
    assert "--date needs a value" in capsys.readouterr().err


@pytest.mark.slow
def test_launcher_runs_standalone_without_the_package(tmp_path):
    # A usage error is reported before the CLI is imported, so this works wherever Python does.
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "--date"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--date needs a value" in result.stderr


def test_launcher_main_calls_the_cli_from_the_repo_root(launcher, monkeypatch, tmp_path):
    seen = {}
    job_id_logger = logging.getLogger(launcher.DATAFLOW_JOB_ID_LOGGER)
    monkeypatch.setattr(job_id_logger, "level", job_id_logger.level)  # restored afterwards

    def fake_cli_main(argv):
        seen["argv"], seen["cwd"], seen["level"] = argv, Path.cwd(), job_id_logger.level
        return 1

    fake_pipeline = types.ModuleType("pipeline")
    fake_cli = types.ModuleType("pipeline.cli.main")
    fake_cli.main = fake_cli_main
    fake_pipeline.cli = fake_cli
    monkeypatch.setitem(sys.modules, "pipeline", fake_pipeline)
    monkeypatch.setitem(sys.modules, "pipeline.cli.main", fake_cli)
    monkeypatch.chdir(tmp_path)  # restored afterwards; main() moves to the repo root

    assert launcher.main(AIRFLOW_ARGV) == 1
    assert seen["argv"] == launcher.build_argv(AIRFLOW_ARGV)
    assert seen["cwd"] == REPO
    # This logger's INFO line names the Dataflow job in the log; the CLI turns "apache_beam" down to WARNING.
    assert seen["level"] == logging.INFO


def run_real_launcher(script: Path, argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_real_cli_accepts_every_flag_airflow_adds(tmp_path):
    # The CLI rejects the first flag that is neither its own nor Beam's (exit 2, naming it). With a bogus flag
    # last, being told about the bogus one proves every flag Airflow's operator adds got through.
    argv = [*AIRFLOW_ARGV, "--staging_location=gs://bucket/staging", "--bogus_flag=1"]
    result = run_real_launcher(LAUNCHER, argv, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "launch_score: sentiment-score score --config configs/dataflow.yaml --date 2026-11-28 " in result.stderr
    assert "unknown option --bogus_flag=1" in result.stderr


@pytest.mark.slow
def test_real_cli_accepts_every_template_parameter(tmp_path):
    params = [f"--{name}=gs://bucket/{name}/" for name in ("customers", "reviews", "model_dir", "output")]
    launcher_flags = [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=europe-west1",
        "--staging_location=gs://bucket/staging",
        "--temp_location=gs://bucket/tmp",
        "--setup_file=/template/setup.py",
    ]
    result = run_real_launcher(FLEX_MAIN, [*launcher_flags, "--date=2026-11-28", *params, "--bogus_flag=1"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--model-dir gs://bucket/model_dir/" in result.stderr
    assert "unknown option --bogus_flag=1" in result.stderr


def test_flex_main_uses_the_launcher_with_the_dataflow_config():
    flex_main = load_module(FLEX_MAIN, "flex_main_under_test")
    launcher_args = ["--runner=DataflowRunner", "--project=p", "--region=r", "--setup_file=/template/setup.py"]
    assert flex_main.build_argv([*launcher_args, "--date=2026-11-28"], worker_image="") == [
        "score",
        "--config",
        "configs/dataflow.yaml",
        "--date",
        "2026-11-28",
        *launcher_args,
        "--no-wait",  # the template launcher must not wait for the job (tests/deploy/test_container.py)
    ]
    assert flex_main.build_argv(["--config=configs/spark.yaml", "--date=2026-11-28"])[:3] == [
        "score",
        "--config",
        "configs/spark.yaml",
    ]


# ---------------------------------------------------------------------------------------------- Flex Template


def metadata() -> dict:
    return json.loads(METADATA.read_text())


def test_metadata_parameters_are_complete():
    meta = metadata()
    assert meta["name"] and meta["description"]
    params = meta["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names))
    assert set(names) == TEMPLATE_PARAMETERS
    for param in params:
        for key in ("name", "label", "helpText"):
            assert isinstance(param.get(key), str) and param[key].strip(), (param.get("name"), key)
        assert isinstance(param["isOptional"], bool)
        for regex in param.get("regexes", []):
            re.compile(regex)
    assert {p["name"]: p["isOptional"] for p in params}["date"] is False


def test_every_template_parameter_reaches_the_job_not_beam(launcher):
    # A parameter the launcher did not know would be passed on as a Beam flag and silently ignored.
    assert set(launcher.JOB_FLAGS) >= TEMPLATE_PARAMETERS


def test_metadata_date_regex():
    # The template refuses a date before launching anything; the job's own spelling check is tested in test_edges.
    (date_param,) = [p for p in metadata()["parameters"] if p["name"] == "date"]
    assert date_param["regexes"] == [r"^\d{4}-\d{2}-\d{2}$"]


def test_metadata_path_regexes_want_cloud_storage():
    for param in metadata()["parameters"]:
        for regex in param.get("regexes", []):
            if param["name"] != "date":
                assert re.search(regex, "gs://bucket/reviews/")
                assert not re.search(regex, "/data/reviews")


@pytest.mark.slow
def test_gcloud_accepts_the_metadata(tmp_path):
    """`gcloud dataflow flex-template build --print-only` type-checks metadata.json locally, without GCP."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed")
    env = dict(
        os.environ,
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),  # an empty config: no account, no project, nothing shared
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
    )
    result = subprocess.run(
        [
            gcloud,
            "dataflow",
            "flex-template",
            "build",
            "gs://example-bucket/templates/review-sentiment.json",
            "--image=europe-docker.pkg.dev/example/sentiment/review-sentiment-launcher:test",
            "--sdk-language=PYTHON",
            f"--metadata-file={METADATA}",
            "--print-only",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(yaml.safe_load(result.stdout))  # printed as a YAML block scalar holding the JSON spec
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"] == metadata(), "gcloud dropped or changed part of metadata.json"
