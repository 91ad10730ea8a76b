"""Scale-out on one machine: the portable runner with an external SDK worker pool matches DirectRunner."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run.launcher import execute
from tests.conftest import SAMPLE_DATE, LoggedProcess, sample_config, score_args

# Every test here is slow (make test-fast skips them): Beam's job service and a worker pool, and pipeline runs on them.
pytestmark = pytest.mark.slow

# What Beam's local job service logs when a job's pipeline has returned or raised (local_job_service.py, _run_job).
JOB_ENDED = r"Completed job in \S+ seconds with state|Error running pipeline"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def portable_services(tmp_path):
    """Beam's local job service and an external SDK worker pool, each its own process, on loopback, each awaited
    until it says it listens; their output goes to job.log and pool.log. Yields (job port, pool port, job service,
    pool process)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    job_port, pool_port = _free_port(), _free_port()
    job_service_main = "apache_beam.runners.portability.local_job_service_main"
    job_command = [sys.executable, "-m", job_service_main, "--port", str(job_port)]
    job_command += ["--staging_dir", str(tmp_path / "staging")]
    pool_command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main"]
    pool_command += ["--service_port", str(pool_port)]
    job_service = LoggedProcess(job_command, tmp_path / "job.log", env=env)
    pool = LoggedProcess(pool_command, tmp_path / "pool.log", env=env)
    try:
        # Each logs this line once its gRPC server has started (local_job_service.py, worker_pool_main.py).
        job_service.wait_for(rf"Grpc server started at \S+ on port {job_port}\b", timeout=60)
        pool.wait_for(rf"Started worker pool servicer at port: \S+:{pool_port}\b", timeout=60)
        yield job_port, pool_port, job_service, pool.process
    finally:
        for service in (job_service, pool):
            service.process.terminate()
        for service in (job_service, pool):
            service.stop()


def _scores(directory):
    files = sorted(glob.glob(str(directory / "scores-*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("review_id")


def _rejects(directory):
    files = sorted(glob.glob(str(directory / "_rejects" / "rejects-*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("review_id")


def test_portable_runner_matches_direct_runner(sample_dir, bundle_dir, tmp_path, portable_services):
    job_port, pool_port, _, _ = portable_services

    def config(output):
        return sample_config(sample_dir, bundle_dir, output)

    assert execute(config(tmp_path / "direct"), [SAMPLE_DATE], []) == 0
    portable_flags = [
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool_port}",
    ]
    assert execute(config(tmp_path / "portable"), [SAMPLE_DATE], portable_flags) == 0
    direct, portable = tmp_path / "direct" / f"dt={SAMPLE_DATE}", tmp_path / "portable" / f"dt={SAMPLE_DATE}"
    assert _scores(portable).equals(_scores(direct))
    assert _rejects(portable).equals(_rejects(direct))
    assert (portable / "_SUCCESS").exists()
    # The work ran in the pool's SDK worker processes, not in this one.
    assert "sdk_worker" in (tmp_path / "pool.log").read_text(errors="replace").lower()


def test_portable_runner_without_a_job_service_fails_cleanly(sample_dir, bundle_dir, tmp_path, capsys):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "o")
    flags = [
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{_free_port()}",
        "--environment_type=LOOPBACK",
        "--job_server_timeout=5",
    ]
    assert execute(config, [SAMPLE_DATE], flags) == 1
    assert "failed" in capsys.readouterr().err
    assert not (tmp_path / "o" / f"dt={SAMPLE_DATE}" / "_SUCCESS").exists()


def test_no_wait_returns_before_a_portable_job_ends_and_the_job_publishes_by_itself(
    sample_dir, bundle_dir, tmp_path, portable_services
):
    job_port, pool_port, job_service, pool = portable_services
    output = tmp_path / "out"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    endpoints = [f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL"]
    flags = ["--no-wait", "--runner=PortableRunner", *endpoints, f"--environment_config=localhost:{pool_port}"]
    command = [sys.executable, "-m", "pipeline", *score_args(sample_dir, bundle_dir, output, *flags)]
    verify = [sys.executable, "-m", "pipeline", "verify", "--output", str(output), "--date", SAMPLE_DATE]
    # The worker pool is paused while the launcher submits, so the job cannot have run when the launcher returns,
    # however fast this machine is: what is tested is that the launcher does not wait, not a race between the two.
    pool.send_signal(signal.SIGSTOP)
    try:
        submitted = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        first = subprocess.run(verify, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    finally:
        pool.send_signal(signal.SIGCONT)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert submitted.stdout.startswith("submitted: run ") and f"dt={SAMPLE_DATE}" in submitted.stdout
    assert "job " in submitted.stdout and "(the runner gave no job id)" not in submitted.stdout

    assert first.returncode == 1, first.stdout  # the launcher returned before the job published
    # The job publishes in its last step; the job service logs one of these lines once the job has ended.
    job_service.wait_for(JOB_ENDED, timeout=300)
    done = subprocess.run(verify, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + (tmp_path / "job.log").read_text(errors="replace")[-3000:]
    assert (
        _scores(output / f"dt={SAMPLE_DATE}").num_rows
        == json.loads((output / f"dt={SAMPLE_DATE}" / "_SUCCESS").read_text())["rows"]["scored"]
    )
    # The job, not the launcher, released the lease once it published.
    leases = list((tmp_path / "out.staging" / "_leases" / f"dt={SAMPLE_DATE}").glob("lease-*.json"))
    assert len(leases) == 1 and json.loads(leases[0].read_text())["released"] is True


def _jobs(job_port: int) -> list[tuple[str, str]]:
    """(job id, state name) of every job the job service knows, asked over its Job API."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    with grpc.insecure_channel(f"localhost:{job_port}") as channel:
        infos = beam_job_api_pb2_grpc.JobServiceStub(channel).GetJobs(beam_job_api_pb2.GetJobsRequest()).job_info
        return [(j.job_id, beam_job_api_pb2.JobState.Enum.Name(j.state)) for j in infos]


def _await_job_state(job_port: int, job_id: str, state: str, timeout: float) -> None:
    """Returns once the job has reached state, awaited on the Job API's state stream (its history, then changes)."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    wanted = beam_job_api_pb2.JobState.Enum.Value(state)
    request = beam_job_api_pb2.GetJobStateRequest(job_id=job_id)
    with grpc.insecure_channel(f"localhost:{job_port}") as channel:
        seen = []
        for event in beam_job_api_pb2_grpc.JobServiceStub(channel).GetStateStream(request, timeout=timeout):
            if event.state == wanted:
                return
            seen.append(beam_job_api_pb2.JobState.Enum.Name(event.state))
    pytest.fail(f"job {job_id} ended without reaching {state}: {seen}")


@pytest.mark.slow
def test_sigterm_to_a_launcher_waiting_on_a_portable_job_cancels_it_and_nothing_is_published(
    sample_dir, bundle_dir, tmp_path, portable_services
):
    """Issue 17 item 8. The pool is paused, so the job is submitted and cannot progress when the launcher gets
    SIGTERM (no race with the job's speed). The launcher cancels the job, then gives its lease back. Beam's local
    job service marks the job cancelled without stopping it, so when the pool resumes the job runs on: the released
    lease fences it out (its commit refuses the partition), which the old launcher did not do (it published)."""
    job_port, pool_port, job_service, pool = portable_services
    output = tmp_path / "out"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    flags = ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL"]
    flags.append(f"--environment_config=localhost:{pool_port}")
    command = [sys.executable, "-m", "pipeline", *score_args(sample_dir, bundle_dir, output, *flags)]
    pool.send_signal(signal.SIGSTOP)
    try:
        launcher = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        # Submitted, and RUNNING: Beam's local job service marks a job cancelled for good only from there (a cancel
        # while it is still starting is overwritten by RUNNING).
        job_id = job_service.wait_for(r"Running job '([^']+)'", timeout=240).group(1)
        _await_job_state(job_port, job_id, "RUNNING", timeout=120)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        pool.send_signal(signal.SIGCONT)
    assert launcher.returncode == 1, err[-3000:]
    assert "nothing was published" in err
    [(_, state)] = _jobs(job_port)
    assert state == "CANCELLED"
    lease_files = list((tmp_path / "out.staging" / "_leases" / f"dt={SAMPLE_DATE}").glob("lease-*.json"))
    assert len(lease_files) == 1 and json.loads(lease_files[0].read_text())["released"] is True
    # The job goes on in the local job service (its run summary is its last step); the service logs when it ended.
    job_service.wait_for(JOB_ENDED, timeout=240)
    [summary] = list((tmp_path / "out.staging" / "_runs").glob("*.json"))
    [partition] = json.loads(summary.read_text())["partitions"]
    assert partition["status"] == "failed" and "lease" in partition["message"], partition
    assert not (output / f"dt={SAMPLE_DATE}" / "_SUCCESS").exists()
