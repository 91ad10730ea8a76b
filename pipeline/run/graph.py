"""The scoring graph: attaches every step to a pipeline it is given and runs nothing."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from model.bundle import LITERT_BATCH_SIZE
from model.runtime import LITERT, TENSORFLOW, choose_runtime, measured_tensorflow_from_rows
from pipeline import failpoints
from pipeline.publish.commit import CommitPartitions
from pipeline.publish.lease import KeepLeases
from pipeline.run.config import LOCAL_RUNNERS, ScoreConfig
from pipeline.run.plan import RunPlan
from transforms.featurize import Featurize
from transforms.inference import LiteRTModelHandler, ReviewModelHandler, ScoreReviews, TensorflowModelHandler
from transforms.io import ReadTables, WriteParquetShards, plan_read_tasks
from transforms.join import JoinCustomers
from transforms.join_plan import JoinPlan
from transforms.pinned import PinnedBundle
from transforms.schema import DETAIL, FAILURES, FILE_INDEX, MODEL_VERSION, REASON, ROW_INDEX
from transforms.validate import FindDuplicateReviews, Validate

_LOG = logging.getLogger(__name__)
# Customer batches and the id pass's batches are read larger than read_batch_size (at least these many rows): they
# are only hashed, compacted and merged, never featurized, and fewer batches mean fewer elements for Beam to move.
# Measured (benchmarks/README.md, "Settings measured on one host"): 1M reviews against 5M string-id customers
# 12.33 s with these against 13.99 s with read_batch_size for every read (1.13 x); with 333k int-id customers no
# difference (9.63 vs 9.39 s). Per batch, so independent of the number of cores.
CUSTOMER_BATCH_ROWS = 262_144
ID_BATCH_ROWS = 65_536


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


def ignored_runtime_settings(config: ScoreConfig, runtime: str) -> list[str]:
    """The settings of this run that its runtime does not use, each named: litert calls the bundle's flatbuffer, whose
    batch size was fixed when it was converted, and never compiles with XLA. Warned about at start-up rather than
    refused: with `runtime: auto` one config serves runs that resolve to either runtime by their size (a nightly on
    litert, a long backfill on tensorflow), and either runtime's scores are the Keras model's within 1e-5."""
    if runtime != LITERT:
        return []
    ignored = []
    if config.inference_batch_size != LITERT_BATCH_SIZE:
        ignored.append(
            f"inference_batch_size {config.inference_batch_size} (--batch-size): litert calls the model "
            f"{LITERT_BATCH_SIZE} rows at a time, the bundle's conversion"
        )
    if not config.jit_compile:
        ignored.append("jit_compile false (--no-jit): litert does not compile with XLA")
    return ignored


def model_handler(
    options: PipelineOptions, config: ScoreConfig, plan: RunPlan, bundle: PinnedBundle, threads: int
) -> ReviewModelHandler:
    """The Infer stage's ModelHandler: the runtime `runtime: auto` picks for the run's size, shared across a
    machine's worker processes when it is tensorflow (RunInference's share_model_across_processes): measured with
    multi_processing x2 at 1M reviews, 2.40 -> 1.94 GB in all at the same speed. litert is not shared: it saves
    0.08 GB and costs 0.69 x the speed (every call's arrays cross processes)."""
    rows = sum(plan.rows_by_partition.values())
    switch = config.tensorflow_from_rows
    if switch is None and is_local(options):  # remote workers' CPUs are not this machine's: no default for them
        switch = measured_tensorflow_from_rows()
    runtime = choose_runtime(
        config.runtime,
        rows,
        local_processes=is_local(options) and several_processes_per_machine(options),
        tensorflow_from_rows=switch,
    )
    share = runtime == TENSORFLOW and several_processes_per_machine(options)
    _LOG.info("model runtime %s (setting %r, %d review rows)%s", runtime, config.runtime, rows, share * ", shared")
    for setting in ignored_runtime_settings(config, runtime):
        _LOG.warning("setting %s; ignored on model runtime %s (setting 'runtime' %r)", setting, runtime, config.runtime)
    if runtime == TENSORFLOW:
        return TensorflowModelHandler(
            bundle, plan.schema, config.inference_batch_size, config.jit_compile, threads, share_across_processes=share
        )
    return LiteRTModelHandler(bundle, plan.schema, threads, share_across_processes=share)


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
        >> ReadTables(
            customer_tasks,
            schema.customers_schema(),
            max(config.read_batch_size, CUSTOMER_BATCH_ROWS),
            dataset=plan.customers_root or None,
        )
    )["tables"] | "CustomerTables" >> beam.Values()
    # The id pass reads the reviews' ids on its own: reading reviews from the same PCollection as the ids would fuse
    # the full read into the ids' stage, which has to finish (the duplicates side input) before Validate runs, so
    # every review table would be held in memory (or shipped between workers) at once.
    ids = pipeline | "ReadReviewIds" >> ReadTables(
        review_tasks, _id_schema(schema, join_plan), max(config.read_batch_size, ID_BATCH_ROWS), isolate_failures=True
    )
    reviews = pipeline | "ReadReviews" >> ReadTables(
        review_tasks,
        schema.reviews_schema(),
        config.read_batch_size,
        isolate_failures=True,
        dataset=plan.reviews_root or None,
    )
    # The job renews its own leases from its first stage on, as it reads the ids and then as it scores: a --no-wait
    # job has no launcher renewing them, and the id pass runs before any row is scored.
    keep_leases = KeepLeases(plan.leases, plan.run_id, plan.lease_expiry_seconds)
    id_tables = ids["tables"] | "KeepLeasesWhileReadingIds" >> beam.Map(keep_leases)
    duplicates = id_tables | "FindDuplicateReviews" >> FindDuplicateReviews(columns, plan.rows_by_partition)
    join = reviews["tables"] | "JoinCustomers" >> JoinCustomers(customers, id_tables, columns, join_plan)
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
    # Where each partition stages and which dataset each kind of shard is published into: the publisher's names.
    shards, day = plan.publisher.shard_schemas(schema), plan.publisher.partition_column
    staging = {p: plan.publisher.staging_dir(plan.staging_root, p) for p in plan.partitions}
    sinks = {kind: d.location for d in plan.publisher.output_datasets() for kind in d.kinds}
    repeating = (MODEL_VERSION, REASON, DETAIL) + ((day,) if day else ())  # dictionary-encoded in the shards

    def shard_writer(kind: str) -> WriteParquetShards:
        return WriteParquetShards(
            kind,
            staging,
            shards[kind],
            plan.run_id,
            partition_column=day,
            dataset=sinks.get(kind),
            repeating_columns=repeating,
        )

    scores = inferred.scores | "KeepLeases" >> beam.Map(keep_leases)
    score_shards = scores | "WriteScores" >> beam.ParDo(shard_writer("scores"))
    if failpoints.is_armed("score.shard-written"):  # a step only when a test arms the point: no cost otherwise
        score_shards = score_shards | "FailpointShardWritten" >> beam.Map(failpoints.through, "score.shard-written")
    reject_shards = rejects | "WriteRejects" >> beam.ParDo(shard_writer("rejects"))
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
