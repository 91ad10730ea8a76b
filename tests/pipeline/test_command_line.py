"""The operator's command line, through the installed `sentiment-score` in a subprocess: --version, -v after the
command, help on every option, Beam options refused at start-up, YAML dates, and the config's date in a backfill."""

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import SAMPLE_DATE

COMMANDS = ("sample-data", "train", "score", "backfill", "verify")


def sentiment_score(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The installed console script, as an operator runs it."""
    script = shutil.which("sentiment-score")
    assert script, "sentiment-score is not on PATH (run the tests with .venv/bin first on PATH)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def options_without_help(help_text: str) -> list[str]:
    """The options an argparse --help lists with no words after them."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not re.match(r"^  -", line):
            continue
        signature, _, rest = line.strip().partition("  ")
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        continued = re.match(r"^ {6,}\S", follows) and not re.match(r"^  -", follows)
        if not rest.strip() and not continued:
            missing.append(signature)
    return missing


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- --version ---


@pytest.mark.slow
def test_version_names_the_job_and_the_bundle_the_default_config_scores_with(tmp_path, bundle_dir):
    (tmp_path / "configs").mkdir()
    _write(tmp_path / "configs" / "local.yaml", f"model_dir: {bundle_dir}\n")
    from model.bundle import check_bundle

    result = sentiment_score("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sentiment-score 0.1.0")
    assert f"model bundle {bundle_dir}: version {check_bundle(str(bundle_dir)).model_version}" in result.stdout


@pytest.mark.slow
def test_version_without_a_bundle_still_names_the_job_and_says_why_not_the_bundle(tmp_path):
    result = sentiment_score("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sentiment-score 0.1.0")
    assert "model bundle: not resolvable (" in result.stdout and "data/model" in result.stdout


# --- -v after the command ---


@pytest.mark.slow
def test_verbose_is_accepted_after_the_command(tmp_path):
    result = sentiment_score("sample-data", "-v", "--output", str(tmp_path / "s"), "--reviews", "20", "--days", "1")
    assert result.returncode == 0, result.stderr
    assert "apitools not found" in result.stderr  # -v took effect: Beam's import noise is shown again
    assert (tmp_path / "s" / "customers").is_dir()


@pytest.mark.slow
def test_an_unknown_short_option_after_the_command_is_still_a_usage_error(tmp_path):
    result = sentiment_score("sample-data", "-q", "--output", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "unrecognized arguments: -q" in result.stderr
    assert not (tmp_path / "s").exists()


# --- help on every option ---


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_help(command):
    result = sentiment_score(command, "--help")
    assert result.returncode == 0, result.stderr
    assert options_without_help(result.stdout) == []
    assert "-v, --verbose" in result.stdout


def test_the_help_check_finds_an_option_without_help():
    text = "options:\n  -h, --help  show this help\n  --start START\n  --end END   the last day\n"
    assert options_without_help(text) == ["--start START"]


@pytest.mark.slow
def test_the_top_level_help_lists_version():
    result = sentiment_score("--help")
    assert result.returncode == 0
    assert "--version" in result.stdout and options_without_help(result.stdout) == []


# --- Beam options refused at start-up, before anything is written ---


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--runner=NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
        ("--direct_num_workers=two", "invalid int value: 'two'"),
    ],
)
def test_an_option_beam_refuses_is_exit_2_before_anything_is_written(flag, named, sample_dir, bundle_dir, tmp_path):
    output = tmp_path / "out"
    args = ["score", "--customers", str(sample_dir / "customers"), "--reviews", str(sample_dir / "reviews")]
    args += ["--model-dir", str(bundle_dir), "--output", str(output), "--date", SAMPLE_DATE, flag]
    result = sentiment_score(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr and "config error" in result.stderr
    # no lease, no output folder, no run record
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_runner_beam_knows_passes_the_start_up_check(sample_dir, bundle_dir, tmp_path):
    args = ["score", "--customers", str(sample_dir / "customers"), "--reviews", str(sample_dir / "reviews")]
    args += ["--model-dir", str(bundle_dir), "--output", str(tmp_path / "out"), "--date", SAMPLE_DATE]
    result = sentiment_score(*args, "--runner=DirectRunner", "--direct_num_workers=2", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "runner DirectRunner" in result.stdout


# --- dates in YAML ---


def _config(tmp_path, sample_dir, bundle_dir, extra: str) -> str:
    text = (
        f"customers: {sample_dir / 'customers'}\nreviews: {sample_dir / 'reviews'}\nmodel_dir: {bundle_dir}\n"
        f"output: {tmp_path / 'out'}\nbeam: {{runner: FnApiRunner}}\n{extra}"
    )
    return _write(tmp_path / "config.yaml", text)


@pytest.mark.slow
def test_an_unquoted_yaml_date_is_a_date(sample_dir, bundle_dir, tmp_path):
    config = _config(tmp_path, sample_dir, bundle_dir, f"date: {SAMPLE_DATE}\n")
    result = sentiment_score("score", "--config", config, "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"dt={SAMPLE_DATE}" in result.stdout and "score " in result.stdout


@pytest.mark.slow
def test_a_yaml_date_that_is_no_day_is_refused_naming_the_setting(sample_dir, bundle_dir, tmp_path):
    config = _config(tmp_path, sample_dir, bundle_dir, "date: 2026-11-31\n")
    result = sentiment_score("score", "--config", config, "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: not valid YAML: a date that is no day (day is out of range for month)" in result.stderr
    quoted = _config(tmp_path, sample_dir, bundle_dir, "date: '20261128'\n")
    result = sentiment_score("score", "--config", quoted, "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "setting 'date' must be a date YYYY-MM-DD, got '20261128'" in result.stderr


@pytest.mark.slow
def test_a_config_date_given_to_backfill_is_refused_saying_so(sample_dir, bundle_dir, tmp_path):
    config = _config(tmp_path, sample_dir, bundle_dir, f"date: {SAMPLE_DATE}\n")
    result = sentiment_score(
        "backfill", "--config", config, "--start", "2026-11-27", "--end", SAMPLE_DATE, "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"setting 'date' ({SAMPLE_DATE}, from {config}) is for score" in result.stderr
    without = _config(tmp_path, sample_dir, bundle_dir, "")
    result = sentiment_score(
        "backfill", "--config", without, "--start", "2026-11-27", "--end", SAMPLE_DATE, "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
