"""Run signals: quiet output, the Prometheus metrics file and push, OpenLineage events, on success and failure."""

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.native_output import VERBOSE_ENV, quiet_native_stderr
from pipeline.cli.worker_site import sitecustomize
from pipeline.errors import ConfigError
from pipeline.publish.factory import publisher_for
from pipeline.publish.publisher import RowCounts
from pipeline.publish.results import PartitionResult, Status
from pipeline.run.config import build_config
from pipeline.run.plan import RunPlan
from pipeline.run.telemetry import RunOutcome, RunSignals, check_signals
from pipeline.signals import metrics
from pipeline.signals.lineage import check_lineage_block, lineage_run_id, parse_parent
from tests.conftest import SAMPLE_DATE, partition_summary, score_args
from tests.pipeline.signals.test_lineage import validate
from transforms.schema import RunSchema

# Lines a clean run printed before issue 20, each from a library; none may come back.
NOISE = (
    "apitools not found",
    "Created TensorFlow Lite XNNPACK delegate",
    "INFO:apache_beam",
    "INFO:__main__",
    "No semi_persistent_directory found",
    "oneDNN custom operations",
    "NodeDef mentions attribute",
    "absl::InitializeLog",
)


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def _samples(text: str) -> dict[str, list]:
    """name -> samples of a Prometheus text exposition, parsed by prometheus_client's own parser."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _value(samples: dict, name: str, **labels) -> float:
    (match,) = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return match


def _outcome(status="published", exit_code=0, **extra) -> RunOutcome:
    rows = RowCounts(read=300, scored=290, rejected=10)
    summary = {"rejected_by_reason": {"null_text": 4, "missing_customer": 6}, "drift": {"psi": 0.05}}
    result = PartitionResult(SAMPLE_DATE, status, status, rows, summary=summary)
    values = dict(
        command="score",
        run_id="20261128T000000Z-abcdef12",
        model_version="sha256-0123",
        partitions=[SAMPLE_DATE],
        results=[result],
        exit_code=exit_code,
        started_at=1000.0,
        ended_at=1060.0,
    )
    return RunOutcome(**{**values, **extra})


# --- metrics, as functions ---


def test_metrics_of_a_published_partition_parse_and_carry_its_label():
    samples = _samples(metrics.generate_text(_outcome()))
    assert _value(samples, "sentiment_score_rows_read", partition=SAMPLE_DATE, outcome="published") == 300
    assert _value(samples, "sentiment_score_rows_rejected", partition=SAMPLE_DATE, outcome="published") == 10
    assert _value(samples, "sentiment_score_rows_rejected_by_reason", reason="missing_customer") == 6
    assert _value(samples, "sentiment_score_reject_ratio", partition=SAMPLE_DATE) == pytest.approx(10 / 300)
    assert "sentiment_score_reject_fraction" not in samples  # a share is a _ratio in Prometheus' naming
    assert _value(samples, "sentiment_score_score_psi", partition=SAMPLE_DATE) == 0.05
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 1
    assert _value(samples, "sentiment_score_last_success_timestamp_seconds") == 1060
    assert _value(samples, "sentiment_score_run_duration_seconds") == 60
    assert _value(samples, "sentiment_score_run_exit_status") == 0
    assert _value(samples, "sentiment_score_model_info", version="sha256-0123") == 1


def test_metrics_of_a_refused_partition_say_failed_and_set_no_success():
    samples = _samples(metrics.generate_text(_outcome(status="failed", exit_code=1)))
    assert _value(samples, "sentiment_score_rows_read", partition=SAMPLE_DATE, outcome="failed") == 300
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 0
    assert _value(samples, "sentiment_score_run_exit_status") == 1
    assert "sentiment_score_last_success_timestamp_seconds" not in samples
    assert "sentiment_score_partition_last_success_timestamp_seconds" not in samples


def test_a_failed_run_keeps_the_last_success_of_the_file_it_replaces(tmp_path):
    path = str(tmp_path / "job.prom")
    metrics.write_metrics_file(path, _outcome())
    metrics.write_metrics_file(path, _outcome(status="failed", exit_code=1, ended_at=5000.0))
    samples = _samples(Path(path).read_text())
    assert _value(samples, "sentiment_score_run_exit_status") == 1
    assert _value(samples, "sentiment_score_last_success_timestamp_seconds") == 1060
    assert _value(samples, "sentiment_score_partition_last_success_timestamp_seconds", partition=SAMPLE_DATE) == 1060
    assert [p for p in os.listdir(tmp_path)] == ["job.prom"]  # written through a temporary file, renamed


def _plan(tmp_path, partitions: list[str], failed: dict[str, str]) -> RunPlan:
    """A planned run as plan_run returns it: days to score, and days refused at start-up with why."""
    return RunPlan(
        run_id="20261128T000000Z-feedf00d",
        started_at=1000.0,
        schema=RunSchema(),
        model_version="sha256-0123",
        customer_files=[],
        review_files=[],
        partitions=partitions,
        rows_by_partition={p: 0 for p in partitions},
        files_by_partition={p: [] for p in partitions},
        failed=failed,
        output=str(tmp_path / "out"),
        publisher=publisher_for(str(tmp_path / "out")),
    )


def test_a_day_refused_at_start_up_has_partition_published_0_and_keeps_its_last_success(tmp_path):
    path = str(tmp_path / "job.prom")
    days = ["2026-11-27", SAMPLE_DATE]
    metrics.write_metrics_file(path, _outcome(partitions=days, results=[], ended_at=500.0))
    earlier = [PartitionResult(d, Status.PUBLISHED, "", RowCounts(0, 0, 0)) for d in days]
    metrics.write_metrics_file(path, _outcome(partitions=days, results=earlier, ended_at=700.0))
    signals = RunSignals(build_config({"metrics_file": path}), "backfill", days)
    plan = _plan(tmp_path, [SAMPLE_DATE], {"2026-11-27": "f.parquet: not a readable Parquet file"})
    signals.start(plan)
    refused = PartitionResult.failed("2026-11-27", "refused at start-up: f.parquet")
    published = PartitionResult(SAMPLE_DATE, Status.PUBLISHED, "", RowCounts(read=2, scored=2, rejected=0))
    signals.record([refused, published])
    signals.end(1)
    samples = _samples(Path(path).read_text())
    assert _value(samples, "sentiment_score_partition_published", partition="2026-11-27") == 0
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 1
    last = "sentiment_score_partition_last_success_timestamp_seconds"
    assert _value(samples, last, partition="2026-11-27") == 700  # carried over from the file it replaces
    assert _value(samples, last, partition=SAMPLE_DATE) > 700  # published by this run


def test_a_day_that_failed_mid_run_has_partition_published_0_and_keeps_its_last_success(tmp_path):
    path = str(tmp_path / "job.prom")
    earlier = [PartitionResult(SAMPLE_DATE, Status.PUBLISHED, "", RowCounts(0, 0, 0))]
    metrics.write_metrics_file(path, _outcome(results=earlier, ended_at=700.0))
    signals = RunSignals(build_config({"metrics_file": path}), "score", [SAMPLE_DATE])
    signals.start(_plan(tmp_path, [SAMPLE_DATE], {}))
    signals.record([PartitionResult.failed(SAMPLE_DATE, "run failed")])
    signals.end(1)
    samples = _samples(Path(path).read_text())
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 0
    assert _value(samples, "sentiment_score_partition_last_success_timestamp_seconds", partition=SAMPLE_DATE) == 700


def test_a_run_stopped_before_its_plan_still_names_its_run_id(tmp_path):
    path = str(tmp_path / "job.prom")
    signals = RunSignals(build_config({"metrics_file": path}), "score", [SAMPLE_DATE])
    signals.fail("customers: no customer files match")
    signals.end(1)
    samples = _samples(Path(path).read_text())
    (info,) = samples["sentiment_score_run_info"]
    assert info.labels["run_id"] == signals.run_id != ""
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 0


def test_a_later_success_replaces_the_last_success(tmp_path):
    path = str(tmp_path / "job.prom")
    metrics.write_metrics_file(path, _outcome())
    metrics.write_metrics_file(path, _outcome(ended_at=9000.0))
    samples = _samples(Path(path).read_text())
    assert _value(samples, "sentiment_score_last_success_timestamp_seconds") == 9000


def test_a_metrics_file_the_textfile_collector_would_not_read_is_a_config_error():
    check_signals(build_config({"metrics_file": "/var/lib/node_exporter/sentiment.prom"}))
    with pytest.raises(ConfigError, match="'metrics_file' must end in .prom"):
        check_signals(build_config({"metrics_file": "/var/lib/node_exporter/sentiment.txt"}))


def test_a_lineage_file_under_a_regular_file_is_a_config_error_naming_both(tmp_path):
    check_signals(build_config({"lineage_file": str(tmp_path / "new" / "folders" / "lineage.jsonl")}))
    (tmp_path / "plain").write_text("a file, not a folder")
    path = tmp_path / "plain" / "events" / "lineage.jsonl"
    with pytest.raises(ConfigError, match=f"setting 'lineage_file' {path}: {tmp_path / 'plain'} is not a folder"):
        check_signals(build_config({"lineage_file": str(path)}))


# --- lineage, as functions ---


def test_the_lineage_run_id_is_a_uuid_derived_from_the_run_id():
    first = lineage_run_id("20261128T000000Z-abcdef12")
    assert uuid.UUID(first).version == 5
    assert lineage_run_id("20261128T000000Z-abcdef12") == first
    assert lineage_run_id("20261128T000000Z-abcdef13") != first


def test_the_parent_from_airflows_macro_is_read_and_a_malformed_one_refused():
    run = str(uuid.uuid4())
    assert parse_parent(f"airflow/review_sentiment.score/{run}") == ("airflow", "review_sentiment.score", run)
    with pytest.raises(ConfigError, match="NAMESPACE/JOB_NAME/RUN_ID"):
        parse_parent("review_sentiment.score")
    with pytest.raises(ConfigError, match="is not a UUID"):
        parse_parent("airflow/review_sentiment.score/yesterday")


def test_the_lineage_block_names_an_unknown_or_wrong_setting():
    check_lineage_block({"url": "http://marquez:5000", "namespace": "nightly", "timeout": 3})
    with pytest.raises(ConfigError, match="unknown setting 'lineage.uri'"):
        check_lineage_block({"uri": "http://marquez:5000"})
    with pytest.raises(ConfigError, match="'lineage.timeout' must be a positive"):
        check_lineage_block({"url": "http://marquez:5000", "timeout": 0})


# --- quiet output, as functions ---


def test_the_noise_filter_drops_beams_gcp_warning_and_keeps_a_real_one():
    drop = sitecustomize.DropNoise()

    def record(message):
        return logging.LogRecord("root", logging.WARNING, __file__, 1, message, None, None)

    assert not drop.filter(record("apitools not found, and bigquery client libraries are not available despite"))
    assert drop.filter(record("could not release the lease of out/dt=2026-11-28: timed out"))
    assert sitecustomize.VERBOSE_ENV == VERBOSE_ENV


@pytest.mark.slow
def test_the_worker_site_quiets_only_beams_sdk_workers():
    script = (
        "import logging, sitecustomize; logging.basicConfig(level=logging.INFO); "
        "logging.getLogger('job').info('the job line')"
    )
    site = os.path.dirname(sitecustomize.__file__)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_SERVICE_DESCRIPTOR") and k != VERBOSE_ENV}
    env["PYTHONPATH"] = site
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert "the job line" in plain.stderr  # a Python process that only inherited the PYTHONPATH logs as it would
    worker_env = {**env, "LOGGING_API_SERVICE_DESCRIPTOR": "x", "CONTROL_API_SERVICE_DESCRIPTOR": "y"}
    worker = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=worker_env, timeout=60)
    assert "the job line" not in worker.stderr  # a worker's INFO goes to the runner only


def _write_native_lines():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"a real native error\n")


def test_native_noise_written_to_fd_2_is_dropped_and_the_rest_passed_on(capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with quiet_native_stderr():
        _write_native_lines()
    err = capfd.readouterr().err
    assert "XNNPACK" not in err
    assert "a real native error" in err


def test_verbose_passes_native_noise_through(capfd, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with quiet_native_stderr():
        _write_native_lines()
    err = capfd.readouterr().err
    assert "Created TensorFlow Lite XNNPACK delegate" in err
    assert "a real native error" in err


# --- the Pushgateway, against a loopback server ---


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8")
        type(self).received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    _Gateway.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Gateway.received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_metrics_are_pushed_to_a_pushgateway_and_parse(gateway):
    url, received = gateway
    metrics.push_metrics(url, _outcome())
    ((method, path, body),) = received
    assert (method, path) == ("POST", "/metrics/job/sentiment_score")
    samples = _samples(body)
    assert _value(samples, "sentiment_score_rows_scored", partition=SAMPLE_DATE, outcome="published") == 290
    assert _value(samples, "sentiment_score_last_success_timestamp_seconds") == 1060


@pytest.mark.slow
def test_a_failed_run_pushes_no_last_success_so_the_gateway_keeps_the_old_one(gateway):
    url, received = gateway
    metrics.push_metrics(url, _outcome(status="failed", exit_code=1))
    ((_, _, body),) = received
    samples = _samples(body)
    assert _value(samples, "sentiment_score_run_exit_status") == 1
    assert "sentiment_score_last_success_timestamp_seconds" not in samples


# --- the command line, end to end ---


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600, env=env
    )


def _events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def clean_run(sample_dir, bundle_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    signals = ["--metrics-file", str(root / "m" / "job.prom"), "--lineage-file", str(root / "lineage.jsonl")]
    result = _cli(*score_args(sample_dir, bundle_dir, root / "out", "--runner=FnApiRunner", *signals))
    return result, root


@pytest.mark.slow
def test_a_clean_score_prints_only_the_jobs_own_lines(clean_run):
    result, _ = clean_run
    assert result.returncode == 0, result.stderr
    assert _noise(result.stdout + result.stderr) == []
    assert "done: " in result.stdout
    assert "INFO sentiment-score: run " in result.stderr  # the job's own progress lines stay


@pytest.mark.slow
def test_verbose_shows_the_libraries_output_again(sample_dir, bundle_dir, tmp_path):
    result = _cli("-v", *score_args(sample_dir, bundle_dir, tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "apitools not found" in result.stderr
    assert "Created TensorFlow Lite XNNPACK delegate" in result.stderr
    assert "DEBUG" in result.stderr


@pytest.mark.slow
def test_verify_and_a_multi_processing_run_are_quiet(sample_dir, bundle_dir, tmp_path):
    flags = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    scored = _cli(*score_args(sample_dir, bundle_dir, tmp_path / "out", *flags))
    assert scored.returncode == 0, scored.stderr
    verified = _cli("verify", "--output", str(tmp_path / "out"), "--date", SAMPLE_DATE)
    assert verified.returncode == 0, verified.stdout
    assert _noise(scored.stdout + scored.stderr) == []
    assert _noise(verified.stdout + verified.stderr) == []


@pytest.mark.slow
def test_training_is_quiet(tmp_path):
    from pipeline.training.sample_data import write_sample_data

    write_sample_data(str(tmp_path / "data"), reviews=400, days=1, seed=3, end_date="2026-11-01")
    data = tmp_path / "data"
    args = ["train", "--customers", str(data / "customers"), "--reviews", str(data / "reviews")]
    result = _cli(*args, "--model-dir", str(tmp_path / "model"), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert _noise(result.stdout + result.stderr) == []
    assert "model bundle " in result.stdout


@pytest.mark.slow
def test_a_clean_runs_metrics_file_parses_and_carries_the_partition(clean_run):
    _, root = clean_run
    samples = _samples((root / "m" / "job.prom").read_text())
    read = _value(samples, "sentiment_score_rows_read", partition=SAMPLE_DATE, outcome="published")
    scored = _value(samples, "sentiment_score_rows_scored", partition=SAMPLE_DATE, outcome="published")
    rejected = _value(samples, "sentiment_score_rows_rejected", partition=SAMPLE_DATE, outcome="published")
    assert read == scored + rejected > 0
    assert sum(s.value for s in samples["sentiment_score_rows_rejected_by_reason"]) == rejected
    assert _value(samples, "sentiment_score_run_exit_status") == 0
    assert _value(samples, "sentiment_score_last_success_timestamp_seconds") > 0


@pytest.mark.slow
def test_a_clean_runs_lineage_holds_start_and_complete_with_inputs_and_outputs(clean_run, sample_dir):
    _, root = clean_run
    start, complete = _events(root / "lineage.jsonl")
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    inputs = {d["name"] for d in complete["inputs"]}
    assert inputs == {str(sample_dir / "customers"), str(sample_dir / "reviews")}  # roots, the day in a facet
    assert all(d["facets"]["schema"]["fields"] for d in complete["inputs"])
    (output,) = complete["outputs"]
    assert output["name"] == str(root / "out")
    assert output["outputFacets"]["subset"]["outputCondition"]["partitions"][0]["dimensions"] == {"dt": SAMPLE_DATE}
    assert output["outputFacets"]["outputStatistics"]["rowCount"] > 0
    for event in (start, complete):
        validate(event)  # against the vendored OpenLineage schema
    summary = partition_summary(root / "out" / f"dt={SAMPLE_DATE}")
    assert start["run"]["runId"] == lineage_run_id(summary["run_id"])


@pytest.mark.slow
def test_a_run_refused_by_the_reject_ceiling_reports_failed_and_fail(sample_dir, bundle_dir, tmp_path):
    signals = ["--metrics-file", str(tmp_path / "job.prom"), "--lineage-file", str(tmp_path / "lineage.jsonl")]
    args = score_args(sample_dir, bundle_dir, tmp_path / "out", "--runner=FnApiRunner", *signals)
    result = _cli(*args, "--max-reject-fraction", "0.001")
    assert result.returncode == 1, result.stderr
    samples = _samples((tmp_path / "job.prom").read_text())
    assert _value(samples, "sentiment_score_rows_read", partition=SAMPLE_DATE, outcome="failed") > 0
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 0
    assert _value(samples, "sentiment_score_run_exit_status") == 1
    assert "sentiment_score_last_success_timestamp_seconds" not in samples
    start, fail = _events(tmp_path / "lineage.jsonl")
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert fail["outputs"] == []
    assert "max_reject_fraction" in fail["run"]["facets"]["errorMessage"]["message"]


@pytest.mark.slow
def test_a_start_up_error_still_writes_metrics_and_a_fail_event(sample_dir, bundle_dir, tmp_path):
    signals = ["--metrics-file", str(tmp_path / "job.prom"), "--lineage-file", str(tmp_path / "lineage.jsonl")]
    args = score_args(sample_dir, bundle_dir, tmp_path / "out", "--runner=FnApiRunner", *signals)
    args[args.index("--reviews") + 1] = str(tmp_path / "no-such-reviews")
    result = _cli(*args)
    assert result.returncode == 1, result.stderr
    samples = _samples((tmp_path / "job.prom").read_text())
    assert _value(samples, "sentiment_score_run_exit_status") == 1
    assert _value(samples, "sentiment_score_partition_published", partition=SAMPLE_DATE) == 0
    start, fail = _events(tmp_path / "lineage.jsonl")
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert "no-such-reviews" in fail["run"]["facets"]["errorMessage"]["message"]
    (info,) = samples["sentiment_score_run_info"]  # the run id, named in the metrics and the events alike
    assert info.labels["run_id"] and fail["run"]["runId"] == lineage_run_id(info.labels["run_id"])


@pytest.mark.slow
def test_a_config_error_writes_exit_status_2(sample_dir, bundle_dir, tmp_path):
    signals = ["--metrics-file", str(tmp_path / "job.prom"), "--lineage-file", str(tmp_path / "lineage.jsonl")]
    args = score_args(sample_dir, bundle_dir, tmp_path / "out", "--runner=FnApiRunner", *signals)
    result = _cli(*args, "--max-reject-fraction", "2")
    assert result.returncode == 2, result.stderr
    samples = _samples((tmp_path / "job.prom").read_text())
    assert _value(samples, "sentiment_score_run_exit_status") == 2
    assert [e["eventType"] for e in _events(tmp_path / "lineage.jsonl")] == ["START", "FAIL"]
