"""Shared fixtures: small real sample data and a real (briefly) trained model bundle, made once per session."""

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every `python -m pipeline` a test starts (a CLI subprocess, a worker pool's SDK workers) imports this checkout,
# whatever its working directory, not whichever checkout the environment installed in editable mode (a shared venv);
# the packaging and Airflow tests drop PYTHONPATH on purpose, to run what they installed.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))

SAMPLE_DATE = "2026-11-28"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """Two days of sample data (600 reviews) with the generator's dirty rows."""
    from pipeline.training.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("sample")
    write_sample_data(str(root), reviews=600, days=2, seed=11, end_date=SAMPLE_DATE)
    return root


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    """A model bundle trained for a few epochs on 2000 sample reviews: real weights, real vocabulary."""
    from pipeline.training.sample_data import write_sample_data
    from pipeline.training.train import train_bundle

    data = tmp_path_factory.mktemp("train-data")
    write_sample_data(str(data), reviews=2000, days=1, seed=3, end_date="2026-11-01")
    model_dir = tmp_path_factory.mktemp("bundle") / "model"
    train_bundle(str(data / "customers"), str(data / "reviews"), str(model_dir), epochs=5, seed=5)
    return model_dir


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    from model.bundle import load_bundle

    return load_bundle(str(bundle_dir))


def shard_paths(partition, kind: str) -> list[str]:
    """A published partition's shards of one kind: scores at the top of the folder, rejects under _rejects/."""
    import glob as _glob

    folder = str(partition) if kind == "scores" else os.path.join(str(partition), "_rejects")
    return sorted(_glob.glob(os.path.join(folder, f"{kind}-*.parquet")))


def partition_summary(partition) -> dict:
    """The summary.json a published partition's manifest lists (under _report/RUN/)."""
    from pipeline.publish.parquet import published_summary

    summary = published_summary(str(partition))
    assert summary is not None, f"{partition}: no published summary"
    return summary


def partition_report(partition, name: str = "report.md") -> str:
    """A report file of a published partition, as text (report.md lives beside summary.json under _report/RUN/)."""
    import json as _json

    with open(os.path.join(str(partition), "_SUCCESS"), encoding="utf-8") as f:
        run_id = _json.load(f)["run_id"]
    with open(os.path.join(str(partition), "_report", run_id, name), encoding="utf-8") as f:
        return f.read()


def retrained_bundle(bundle, directory) -> str:
    """The same bundle with slightly different weights: another content version, same vocabulary and shapes."""
    import keras
    import numpy as np

    from model.bundle import save_bundle

    model = keras.models.clone_model(bundle.model)
    model.set_weights([w + np.float32(1e-3) for w in bundle.model.get_weights()])
    return save_bundle(str(directory), model, bundle.vocabulary, bundle.tokenizer, bundle.scaler).model_version


def run_config(paths: dict, model_dir, **settings):
    """The tests' one run-config builder: {"customers", "reviews", "output"} paths (local or s3://) and a bundle, on
    FnApiRunner (no Prism download); any other setting (date, runtime, output_format, ...) as a keyword."""
    from pipeline.run.config import build_config

    inputs = {name: str(paths[name]) for name in ("customers", "reviews", "output")}
    return build_config({**inputs, "model_dir": str(model_dir), "beam": {"runner": "FnApiRunner"}, **settings})


def sample_config(sample_dir, bundle_dir, output, **settings):
    """run_config over the session's sample data."""
    paths = {"customers": sample_dir / "customers", "reviews": sample_dir / "reviews", "output": output}
    return run_config(paths, bundle_dir, **settings)


def corrupt_first_page_header(path) -> None:
    """Overwrites the first page header of the first column: the footer still reads, the data does not."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * 24)


def run_bundle(dofn, elements):
    """Drives a DoFn through its lifecycle as a runner would (its outputs may come from finish_bundle)."""
    import apache_beam as beam
    from apache_beam.transforms.window import GlobalWindow

    dofn.setup()
    dofn.start_bundle()
    window = GlobalWindow()
    outputs = [
        o for element in elements for o in dofn.process(element, timestamp=window.max_timestamp(), window=window)
    ]
    for output in dofn.finish_bundle() or []:
        if isinstance(output, beam.pvalue.TaggedOutput):
            outputs.append(beam.pvalue.TaggedOutput(output.tag, output.value.value))
        else:
            outputs.append(output.value)
    dofn.teardown()
    return outputs


def score_args(sample_dir, bundle_dir, output, *extra: str) -> list[str]:
    """The CLI arguments that score the sample day on FnApiRunner (extra flags replace nothing, they are added)."""
    args = ["score", "--customers", str(sample_dir / "customers"), "--reviews", str(sample_dir / "reviews")]
    args += ["--model-dir", str(bundle_dir), "--output", str(output), "--date", SAMPLE_DATE]
    return args + (list(extra) or ["--runner=FnApiRunner"])


def clean_processes():
    """A multiprocessing context for tests that race real processes: children are forked from a fresh server process
    with the job's modules preloaded, never from pytest's own process. Forking pytest after gRPC's, Arrow's or
    TensorFlow's threads have started crashed a child now and then (SIGSEGV, seen in CI's lease race)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.conftest", "pipeline.publish.lease", "pipeline.publish.commit"])
    return context


def race_for_lease(flags, control: str, partition: str, run_id: str, barrier, results) -> None:
    """One of two processes started together that try to take the same lease; reports whether it won."""
    import time

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.publish import lease
    from pipeline.publish.parquet import ParquetFolders

    if flags:
        FileSystems.set_options(PipelineOptions(flags))
    barrier.wait()
    try:
        lease.acquire(ParquetFolders.lease_folder(control, partition), run_id, time.time(), 3600)
        results.put((partition, run_id, "won"))
    except lease.LeaseHeld:
        results.put((partition, run_id, "held"))


def run_handler(handler, elements):
    """Drives the scoring ModelHandler as RunInference does (the model loaded once, one element per call) and
    routes its results as ScoreReviews does: scores as (partition, table), the rest as TaggedOutputs."""
    from transforms.inference import RouteScores

    model = handler.load_model()
    route = RouteScores()
    route.setup()
    return [output for result in handler.run_inference(elements, model) for output in route.process(result)]


def colliding_ids() -> tuple[str, str]:
    """Two different string customer ids with the same 64-bit key (transforms.id_hashing.hash_strings): 2^11 8-byte
    words in Thue-Morse order and their complement have the same polynomial hash mod 2^64 for every odd multiplier."""
    bits = [0]
    while len(bits) < 2048:
        bits += [1 - x for x in bits]
    a = "".join("aaaaaaaa" if x == 0 else "bbbbbbbb" for x in bits)
    return a, a.translate(str.maketrans("ab", "ba"))


class LoggedProcess:
    """A subprocess whose output lines (stdout and stderr, in one pipe) a thread copies to a log file as they come,
    so a test awaits the line a process prints when something happened (a server listening, a job finished) instead
    of polling for its effect. Stop it with stop()."""

    def __init__(self, command: list[str], log_path, **popen):
        self.log_path = log_path
        read_end, write_end = os.pipe()
        try:
            self.process = subprocess.Popen(command, stdout=write_end, stderr=write_end, **popen)
        finally:
            os.close(write_end)  # the child holds its copy: the pipe ends (EOF) when the child exits
        self._output = os.fdopen(read_end, "rb")
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._copier = threading.Thread(target=self._copy, name=f"log-{os.path.basename(log_path)}", daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self._output:
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        self._output.close()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line (from the start) matching pattern, awaited; fails naming the log when the process closes
        its output (exits) or timeout seconds pass first."""
        regex, seen = re.compile(pattern), 0
        found: list[re.Match] = []

        def matched_or_ended() -> bool:
            nonlocal seen
            for line in self._lines[seen:]:
                if m := regex.search(line):
                    found.append(m)
                    return True
            seen = len(self._lines)
            return self._ended

        with self._changed:
            arrived = self._changed.wait_for(matched_or_ended, timeout)
            tail = "".join(self._lines[-40:])
        if found:
            return found[0]
        why = "closed its output" if arrived else f"printed no such line within {timeout:.0f} s"
        pytest.fail(f"{self.process.args[:3]} {why} (waiting for {pattern!r}); {self.log_path} ends:\n{tail}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after timeout; waits for the log to be complete."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._copier.join(timeout=timeout)


# A loopback S3 server (moto) for the object-store tests: credentials it accepts, and the Beam flags that reach it.
S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION = "testing", "testing", "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
    )


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server in a subprocess on 127.0.0.1 only, answering before the tests start; stopped after."""
    pytest.importorskip("boto3")  # apache-beam[aws]: Beam's S3 filesystem talks to S3 through boto3
    pytest.importorskip("moto.server")  # moto[server]: the S3 protocol served on loopback
    from apache_beam.io.filesystems import FileSystems

    from transforms.beam_compat import filesystems_options

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    previous_options = filesystems_options()
    with pytest.MonkeyPatch.context() as mp:
        # Loopback traffic must never go through a proxy a developer's shell may have set.
        mp.setenv("NO_PROXY", ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"])))
        mp.setenv("no_proxy", ",".join(filter(None, [os.environ.get("no_proxy"), "127.0.0.1"])))
        server = LoggedProcess(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            log_path,
        )
        try:
            # werkzeug prints this once its socket listens (run_simple binds, logs, then serves).
            server.wait_for(rf"Running on http://127\.0\.0\.1:{port}\b", timeout=30)
            yield endpoint
        finally:
            server.stop(timeout=10)
            FileSystems.set_options(previous_options)  # the launcher sets them process-wide


@pytest.fixture(scope="module")
def s3_flags(s3_endpoint):
    return [
        f"--s3_endpoint_url={s3_endpoint}",
        f"--s3_access_key_id={S3_ACCESS_KEY}",
        f"--s3_secret_access_key={S3_SECRET_KEY}",
        f"--s3_region_name={S3_REGION}",
    ]


def file_hashes(root) -> dict[str, str]:
    """Every file below root (relative path) with the sha256 of its bytes, in path order: what "nothing was
    written" and "the input is unchanged" compare."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(found.items()))
