"""The Flink and Spark configs submit the way a remote cluster needs: worker pool environment, reachable artifacts."""

import email.parser
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.spark_runner import SparkJarJobServer, SparkRunner
from google.protobuf import json_format

from pipeline.run.config import load_config
from pipeline.run.options import make_runner, pipeline_options

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXTERNAL_ENV_URN = "beam:env:external:v1"
# Where the worker pool beside each TaskManager / executor listens: the port `boot --worker_pool` serves on.
WORKER_POOL = "localhost:50000"


class FakeFlinkRestApi(BaseHTTPRequestHandler):
    """The few Flink REST endpoints Beam's uber-jar submission uses; keeps the uploaded jar."""

    uploads: list[bytes]

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/jars/upload":
            header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            message = email.parser.BytesParser().parsebytes(header + body)
            (part,) = message.get_payload()
            self.uploads.append(part.get_payload(decode=True))
            self._reply({"filename": "/tmp/flink-web/uploaded_beam.jar", "status": "success"})
        elif self.path == "/v1/jars/uploaded_beam.jar/run":
            assert json.loads(body)["entryClass"] == "org.apache.beam.runners.flink.FlinkPipelineRunner"
            self._reply({"jobid": "f00dcafe"})
        else:
            self._reply({"errors": [self.path]}, 404)

    def do_GET(self):
        replies = {
            "/v1/jobs/f00dcafe/execution-result": {"status": {"id": "COMPLETED"}},
            "/v1/jobs/f00dcafe": {"state": "FINISHED"},
            "/v1/jobs/f00dcafe/exceptions": {"all-exceptions": []},
        }
        self._reply(replies.get(self.path, {"errors": [self.path]}), 200 if self.path in replies else 404)

    def do_DELETE(self):
        self._reply({})


@pytest.fixture
def flink_rest_api():
    handler = type("Handler", (FakeFlinkRestApi,), {"uploads": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.uploads
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def job_server_jar(tmp_path):
    """Stands in for Beam's Flink/Spark job server jar: the submission copies it and adds the pipeline to it."""
    jar = tmp_path / "beam-runners-job-server.jar"
    with zipfile.ZipFile(jar, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    return jar


def test_flink_config_names_a_published_flink_version_and_the_worker_pool():
    beam_options = load_config(str(CONFIGS / "flink.yaml")).beam
    assert beam_options["flink_version"] in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert beam_options["flink_master"].startswith("http")  # a cluster: not [local] or [auto]
    assert (beam_options["environment_type"], beam_options["environment_config"]) == ("EXTERNAL", WORKER_POOL)
    assert beam_options["flink_submit_uber_jar"] is True
    assert "setup_file" not in beam_options, "the runtime image has the project: nothing to stage and install"


@pytest.mark.parametrize("extra", [[], ["--setup_file=SETUP"]], ids=["runtime-image", "setup-file-fallback"])
@pytest.mark.slow
def test_flink_config_submits_one_self_contained_jar(flink_rest_api, job_server_jar, tmp_path, extra, monkeypatch):
    """What the JobManager receives: a jar holding the pipeline, with the worker pool as its environment, and every
    staged file. TaskManagers on other hosts need nothing from the launcher's disk."""
    url, uploads = flink_rest_api
    monkeypatch.chdir(REPO)  # setup_file builds the sdist from the checkout, as a launch from the repo root does
    flags = [f"--flink_master={url}", f"--flink_job_server_jar={job_server_jar}"]
    flags += [flag.replace("SETUP", str(REPO / "setup.py")) for flag in extra]
    options = pipeline_options(load_config(str(CONFIGS / "flink.yaml")), flags)
    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    _ = pipeline | "Create" >> beam.Create([1, 2, 3]) | "Double" >> beam.Map(lambda x: 2 * x)
    assert pipeline.run().wait_until_finish() == "DONE"

    (upload,) = uploads
    (tmp_path / "uploaded.jar").write_bytes(upload)
    with zipfile.ZipFile(tmp_path / "uploaded.jar") as jar:
        names = jar.namelist()
        assert "META-INF/MANIFEST.MF" in names  # the job server jar it was built from
        proto = json_format.Parse(jar.read("BEAM-PIPELINE/pipeline/pipeline.json"), beam_runner_api_pb2.Pipeline())
        submitted = json.loads(jar.read("BEAM-PIPELINE/pipeline/pipeline-options.json"))
        artifacts = {n for n in names if n.startswith("BEAM-PIPELINE/pipeline/artifacts/")}
    (environment,) = proto.components.environments.values()
    assert environment.urn == EXTERNAL_ENV_URN
    assert beam_runner_api_pb2.ExternalPayload.FromString(environment.payload).endpoint.url == WORKER_POOL
    # Every file the workers get is inside the jar, and the pipeline names it there (on the classpath of the job the
    # TaskManagers run), not on the launcher's disk.
    staged = {}
    for dependency in environment.dependencies:
        assert dependency.type_urn == "beam:artifact:type:file:v1", dependency
        assert dependency.role_urn == "beam:artifact:role:staging_to:v1", dependency
        path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dependency.type_payload).path
        name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dependency.role_payload).staged_name
        assert path.startswith("classpath://") and path.removeprefix("classpath://") in artifacts, path
        staged[name] = path
    assert len(staged) == len(artifacts) >= 1
    assert ("workflow.tar.gz" in staged) == bool(extra), staged  # the setup_file fallback's sdist travels too
    assert submitted["beam:option:environment_config:v1"] == WORKER_POOL
    assert submitted["beam:option:flink_version:v1"] == "1.19"


@pytest.mark.slow
def test_spark_config_stages_to_shared_storage_for_the_executors(job_server_jar):
    config = load_config(str(CONFIGS / "spark.yaml"))
    assert "://" in config.beam["artifacts_dir"], "a local artifacts_dir is on the launcher only"
    assert "setup_file" not in config.beam
    options = pipeline_options(config, [f"--spark_job_server_jar={job_server_jar}"])
    # The job server the launcher starts writes staged files where the executors read them, and drives the cluster.
    command, _ = SparkJarJobServer(options).subprocess_cmd_and_endpoint()
    assert command[command.index("-jar") + 1] == str(job_server_jar)
    assert command[command.index("--artifacts-dir") + 1] == config.beam["artifacts_dir"]
    assert command[command.index("--spark-master-url") + 1] == config.beam["spark_master_url"]
    # User code runs in the worker pool beside each executor, not in a process the runner would start.
    environment = SparkRunner().default_environment(options)
    assert environment.to_runner_api(None).urn == EXTERNAL_ENV_URN
    assert environment.url == WORKER_POOL
