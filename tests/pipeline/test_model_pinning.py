"""A run is pinned to one bundle version: a models root's CURRENT resolved once at launch, every worker checks it."""

from __future__ import annotations

import json
import shutil

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from model.bundle import BundleError, resolve_model_dir
from pipeline.run.graph import build_pipeline
from pipeline.run.launcher import execute
from pipeline.run.plan import plan_run
from tests.conftest import SAMPLE_DATE, retrained_bundle, sample_config


def _config(sample_dir, model_dir, output, **extra):
    return sample_config(sample_dir, model_dir, output, **{"date": SAMPLE_DATE, "runtime": "litert", **extra})


@pytest.fixture(scope="module")
def models_root(bundle, bundle_dir, tmp_path_factory):
    """A models root with two immutable version folders and CURRENT naming v1."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(bundle_dir, root / "v1")
    retrained_bundle(bundle, root / "v2")
    (root / "CURRENT").write_text("v1\n")
    return root


@pytest.mark.slow
def test_a_models_root_is_resolved_once_to_the_version_current_names(sample_dir, models_root, bundle, tmp_path):
    assert resolve_model_dir(str(models_root)) == str(models_root / "v1")
    assert execute(_config(sample_dir, models_root, tmp_path / "out"), [SAMPLE_DATE], []) == 0
    manifest = json.loads((tmp_path / "out" / f"dt={SAMPLE_DATE}" / "_SUCCESS").read_text())
    assert manifest["model_dir"] == str(models_root / "v1") and manifest["model_version"] == bundle.model_version


@pytest.mark.parametrize("current", ["v9", "../v1", ""], ids=["missing-version", "outside-root", "empty"])
def test_a_current_that_names_no_version_folder_fails_at_start_up(sample_dir, models_root, tmp_path, capsys, current):
    root = tmp_path / "models"
    shutil.copytree(models_root / "v1", root / "v1")
    (root / "CURRENT").write_text(current)
    capsys.readouterr()
    assert execute(_config(sample_dir, root, tmp_path / "out"), [SAMPLE_DATE], []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(root) in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_bundle_replaced_after_planning_fails_the_run_and_publishes_nothing(sample_dir, bundle, bundle_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(bundle_dir, model_dir)
    config = _config(sample_dir, model_dir, tmp_path / "out")
    plan = plan_run(config, [SAMPLE_DATE])
    assert plan.model_version == bundle.model_version
    replaced = retrained_bundle(bundle, model_dir)  # someone overwrites the bundle in place while the run starts
    assert replaced != bundle.model_version
    with (
        pytest.raises(Exception, match="this run was planned with") as failure,
        beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as pipeline,
    ):
        build_pipeline(pipeline, config, plan)
    message = str(failure.value)
    assert replaced in message and bundle.model_version in message and str(model_dir) in message
    assert not (tmp_path / "out" / f"dt={SAMPLE_DATE}").exists()


def test_resolve_model_dir_leaves_a_bundle_directory_as_it_is(bundle_dir):
    assert resolve_model_dir(str(bundle_dir)) == str(bundle_dir)
    with pytest.raises(BundleError, match="CURRENT must name one version folder"):
        root = bundle_dir.parent / "bad-root"
        root.mkdir(exist_ok=True)
        (root / "CURRENT").write_text("a/b")
        resolve_model_dir(str(root))
