"""The private Beam APIs behind transforms.beam_compat still work as the job uses them (a Beam upgrade fails here)."""

import argparse

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from transforms.beam_compat import (
    add_pipeline_option_flags,
    boto3_s3_client,
    filesystem_options,
    filesystems_options,
    restore_inference_resource_module,
    runner_job_id,
)


@pytest.fixture
def restore_filesystems_options():
    previous = filesystems_options()
    yield
    FileSystems.set_options(previous)


def test_every_flag_of_every_beam_option_class_is_known_and_a_mistyped_one_is_not():
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    add_pipeline_option_flags(parser)
    argv = ["--runner=FnApiRunner", "--direct_num_workers=2", "--setup_file=./setup.py", "--s3_region_name=eu"]
    known, unknown = parser.parse_known_args([*argv, "--direct_num_worker=2"])
    assert (known.runner, known.direct_num_workers, known.setup_file, known.s3_region_name) == (
        "FnApiRunner",
        2,
        "./setup.py",
        "eu",
    )
    assert unknown == ["--direct_num_worker=2"]


def test_the_options_filesystems_were_given_are_read_back(restore_filesystems_options):
    options = PipelineOptions(["--s3_endpoint_url=http://127.0.0.1:9"])
    FileSystems.set_options(options)
    assert filesystems_options() is options
    FileSystems.set_options(None)
    assert filesystems_options() is None


def test_the_s3_filesystem_keeps_its_options_and_a_local_one_none(restore_filesystems_options):
    pytest.importorskip("boto3")
    options = PipelineOptions(["--s3_endpoint_url=http://127.0.0.1:9"])
    FileSystems.set_options(options)
    assert filesystem_options("s3://bucket/key").view_as(S3Options).s3_endpoint_url == "http://127.0.0.1:9"
    assert filesystem_options("/tmp/reviews.parquet") is None


def test_the_boto3_client_follows_the_options_endpoint_and_region():
    pytest.importorskip("boto3")
    flags = ["--s3_access_key_id=k", "--s3_secret_access_key=s", "--s3_region_name=eu-west-1"]
    one = boto3_s3_client(PipelineOptions([*flags, "--s3_endpoint_url=http://127.0.0.1:9"]))
    other = boto3_s3_client(PipelineOptions([*flags, "--s3_endpoint_url=http://127.0.0.1:10"]))
    assert callable(one.put_object) and callable(one.get_object)  # what io.py and lease.py call
    assert (one.meta.endpoint_url, one.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert other.meta.endpoint_url == "http://127.0.0.1:10"


def test_the_portable_runners_job_id_is_found_and_a_result_without_one_gives_none():
    from apache_beam.runners.portability.portable_runner import PipelineResult as PortableResult
    from apache_beam.runners.runner import PipelineResult, PipelineState

    assert runner_job_id(PortableResult(None, "job-42", None, None)) == "job-42"
    assert runner_job_id(PipelineResult(PipelineState.DONE)) is None


def test_run_inference_can_measure_model_memory_without_torch():
    # Beam 2.77 drops `resource` when torch is missing (this venv has none); the compat module gives it back, so
    # RunInference records the model's memory instead of warning on every model load.
    from apache_beam.ml.inference import base

    restore_inference_resource_module()
    assert base.resource is not None and base._get_current_process_memory_in_bytes() > 0
