"""The private Apache Beam APIs the job uses, in one place: a Beam upgrade that moves one breaks only here."""

from __future__ import annotations

import argparse
import resource

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions


def add_pipeline_option_flags(parser: argparse.ArgumentParser) -> None:
    """Adds every flag of every PipelineOptions subclass imported so far to parser: Beam's own way of listing the
    options it knows (private `_add_argparse_args`), to tell Beam flags from mistyped ones."""
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)


def filesystems_options() -> PipelineOptions | None:
    """The options FileSystems.set_options was last given (None before), which Beam keeps private."""
    return FileSystems._pipeline_options


def filesystem_options(path: str) -> PipelineOptions | None:
    """The options the filesystem of path was made with (credentials, endpoint); None for one that keeps none."""
    return getattr(FileSystems.get_filesystem(path), "_options", None)


def boto3_s3_client(options: PipelineOptions):
    """The boto3 S3 client Beam's S3 filesystem makes for these options (endpoint, credentials, region), for the
    requests Beam's S3IO does not offer: one GET of a small object, a conditional put."""
    from apache_beam.io.aws.clients.s3.boto3_client import Client

    return Client(options=options).client


def runner_job_id(result) -> str | None:
    """The runner's id of a submitted pipeline: Dataflow's result has job_id(); the portable runner's (Flink,
    Spark) keeps the Job API's id privately."""
    if callable(getattr(result, "job_id", None)):
        return result.job_id()
    return getattr(result, "_job_id", None)


def restore_inference_resource_module() -> None:
    """Beam 2.77 imports `resource` in the same try block as its ModelManager, which needs torch: without torch it
    sets `resource` to None, so RunInference loses its model-memory metric and logs a WARNING ("Resource module is
    not available for current platform") on every model load. This job has no torch; give Beam the module back."""
    # Imported here, not at the top: Beam's inference module replaces multiprocessing.managers.AutoProxy when it is
    # imported, and the I/O modules that import this one must not do that to every process (a spawn-context
    # multiprocessing Manager then cannot pickle its proxies).
    from apache_beam.ml.inference import base as inference_base

    if getattr(inference_base, "resource", resource) is None:
        inference_base.resource = resource
