"""The scoring graph: attaches every step to a pipeline it is given and runs nothing."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from model.runtime import TENSORFLOW, choose_runtime
from pipeline.commit import CommitPartitions
from pipeline.config import LOCAL_RUNNERS, ScoreConfig
from pipeline.plan import RunPlan
from transforms.featurize import Featurize
from transforms.inference import ReviewModelHandler, ScoreReviews
from transforms.io import ReadTables, WriteParquetShards, plan_read_tasks
from transforms.join import JoinCustomers, JoinPlan
from transforms.pinned import PinnedBundle
from transforms.schema import FAILURES, FILE_INDEX, ROW_INDEX
from transforms.validate import FindDuplicateReviews, Validate

_LOG = logging.getLogger(__name__)
# Customer batches are read larger than review batches: they are only compacted and merged, never featurized.
CUSTOMER_BATCH_ROWS = 262_144


def threads_per_process(options: PipelineOptions, configured: int) -> int:
    """background_threads, but no more than the cores each worker process gets when DirectRunner runs several on
    this machine (multi_processing): measured at 1M reviews, two workers of 1 thread each instead of 2 peak at
    1.36 GB instead of 1.51 GB in all, at the same speed (within a run's spread)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return configured
    workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, min(configured, (os.cpu_count() or 1) // workers))


def is_local(options: PipelineOptions) -> bool:
    """Whether the pipeline runs on this machine (DirectRunner, which this job runs as FnApiRunner)."""
    return (options.view_as(StandardOptions).runner or "DirectRunner") in LOCAL_RUNNERS


def several_processes_per_machine(options: PipelineOptions) -> bool:
    """Whether workers run as several SDK processes per machine: DirectRunner's multi_processing, and the remote
    runners (Dataflow starts one per vCPU; a worker pool one per task slot). In-process runs are one process."""
    if not is_local(options):
        return True
    direct = options.view_as(DirectOptions)
    return direct.direct_running_mode == "multi_processing" and direct.direct_num_workers != 1


def model_handler(
    options: PipelineOptions, config: ScoreConfig, plan: RunPlan, bundle: PinnedBundle, threads: int
) -> ReviewModelHandler:
    """The Infer stage's ModelHandler: the runtime `runtime: auto` picks for the run's size, shared across a
    machine's worker processes when it is tensorflow (RunInference's share_model_across_processes): measured with
    multi_processing x2 at 1M reviews, 2.40 -> 1.94 GB in all at the same speed. litert is not shared: it saves
    0.08 GB and costs 0.69 x the speed (every call's arrays cross processes)."""
    rows = sum(plan.rows_by_partition.values())
    runtime = choose_runtime(
        config.runtime, rows, local_processes=is_local(options) and several_processes_per_machine(options)
    )
    share = runtime == TENSORFLOW and several_processes_per_machine(options)
    _LOG.info("model runtime %s (setting %r, %d review rows)%s", runtime, config.runtime, rows, share * ", shared")
    return ReviewModelHandler(
        bundle,
        plan.schema,
        runtime,
        config.inference_batch_size,
        config.jit_compile,
        threads,
        share_across_processes=share,
    )


def build_pipeline(pipeline: beam.Pipeline, config: ScoreConfig, plan: RunPlan) -> dict:
    """Attaches read → join → validate → featurize → infer → write → commit (the README's diagram); returns the
    labelled outputs."""
    schema, columns = plan.schema, plan.schema.columns
    customer_tasks = plan_read_tasks(plan.customer_files, config.rows_per_read_task)
    review_tasks = plan_read_tasks(plan.review_files, config.rows_per_read_task)
    # Broadcast the customer table while its estimated size fits broadcast_limit_mb, else a keyed shuffle join.
    join_plan = JoinPlan.for_files(
        plan.customer_files,
        sum(plan.rows_by_partition.values()),
        columns,
        schema.customer_id_kind == "string",
        config.broadcast_limit_mb,
    )
    _LOG.info("%s", join_plan.describe())
    # One bundle per worker process for featurizing and scoring, pinned to the version the launcher planned with.
    bundle = PinnedBundle(plan.model_dir, plan.model_version)
    threads = threads_per_process(pipeline.options, config.background_threads)
    handler = model_handler(pipeline.options, config, plan, bundle, threads)

    customers = (
        pipeline
        | "ReadCustomers"
        >> ReadTables(customer_tasks, schema.customers_schema(), max(config.read_batch_size, CUSTOMER_BATCH_ROWS))
    )["tables"] | "CustomerTables" >> beam.Values()
    # The id pass reads the reviews' ids on its own: reading reviews from the same PCollection as the ids would fuse
    # the full read into the ids' stage, which has to finish (the duplicates side input) before Validate runs, so
    # every review table would be held in memory (or shipped between workers) at once.
    ids = pipeline | "ReadReviewIds" >> ReadTables(
        review_tasks, _id_schema(schema, join_plan), max(config.read_batch_size, 65536), isolate_failures=True
    )
    reviews = pipeline | "ReadReviews" >> ReadTables(
        review_tasks, schema.reviews_schema(), config.read_batch_size, isolate_failures=True
    )
    duplicates = ids["tables"] | "FindDuplicateReviews" >> FindDuplicateReviews(columns, plan.rows_by_partition)
    join = reviews["tables"] | "JoinCustomers" >> JoinCustomers(customers, ids["tables"], columns, join_plan)
    validated = join["joined"] | "Validate" >> Validate(schema, duplicates)
    featurized = validated["valid"] | "Featurize" >> Featurize(bundle, schema, threads)
    inferred = featurized.rows | "Infer" >> ScoreReviews(handler)

    rejects = (
        validated["rejects"],
        featurized[Featurize.REJECTS],
        inferred[ScoreReviews.REJECTS],
    ) | "CollectRejects" >> beam.Flatten()
    failures = (
        ids[FAILURES],
        reviews[FAILURES],
        featurized[FAILURES],
        inferred[FAILURES],
    ) | "CollectFailures" >> beam.Flatten()
    score_shards = inferred.scores | "WriteScores" >> beam.ParDo(
        WriteParquetShards("scores", plan.staging_root, schema.scores_schema(), plan.run_id, output_root=plan.output)
    )
    reject_shards = rejects | "WriteRejects" >> beam.ParDo(
        WriteParquetShards("rejects", plan.staging_root, schema.rejects_schema(), plan.run_id, output_root=plan.output)
    )
    committed = {
        "scores": score_shards,
        "rejects": reject_shards,
        "stats": featurized[Featurize.STATS],
        "failures": failures,
    } | "CommitPartitions" >> CommitPartitions(plan, config, join["customers"])
    return {"scores": inferred.scores, "rejects": rejects, **committed}


def _id_schema(schema, join_plan: JoinPlan) -> pa.Schema:
    """What the id pass reads: review ids and row keys, and customer ids when the join needs them (the shuffle
    join, and the filter that keeps only the customers some review asks for)."""
    columns = schema.columns
    names = [columns.review_id] + ([columns.customer_id] if join_plan.buckets or join_plan.filter_customers else [])
    return pa.schema(
        [schema.reviews_schema().field(name) for name in names]
        + [pa.field(FILE_INDEX, pa.int32()), pa.field(ROW_INDEX, pa.int64())]
    )
