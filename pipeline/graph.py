"""The scoring graph: attaches every step to a pipeline it is given and runs nothing."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from model.runtime import TENSORFLOW, choose_runtime
from pipeline.commit import CommitPartition, WriteRunSummary
from pipeline.config import ScoreConfig
from pipeline.plan import RunPlan
from transforms.featurize import Featurize
from transforms.inference import ReviewModelHandler, ScoreReviews
from transforms.io import ReadParquetBatches, WriteParquetShards, plan_read_tasks
from transforms.join import JoinCustomers, JoinPlan
from transforms.pinned import PinnedBundle
from transforms.schema import FAILURES, FILE_INDEX, ROW_INDEX
from transforms.validate import FindDuplicateReviews, ValidateRows

_LOG = logging.getLogger(__name__)
# Customer batches are read larger than review batches: they are only compacted and merged, never featurized.
CUSTOMER_BATCH_ROWS = 262_144


def _vocabulary_record(element):
    partition, counts = element
    return partition, {"kind": "vocabulary", "words": int(counts[0]), "oov": int(counts[1])}


def _sum_pairs(pairs):
    words = oov = 0
    for w, o in pairs:
        words += w
        oov += o
    return words, oov


def threads_per_process(options: PipelineOptions, configured: int) -> int:
    """background_threads, but no more than the cores each worker process gets when DirectRunner runs several on
    this machine (multi_processing): measured at 1M reviews, two workers of 1 thread each instead of 2 peak at
    1.36 GB instead of 1.51 GB in all, at the same speed (within a run's spread)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return configured
    workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, min(configured, (os.cpu_count() or 1) // workers))


def several_processes_per_machine(options: PipelineOptions) -> bool:
    """Whether workers run as several SDK processes per machine: DirectRunner's multi_processing, and the remote
    runners (Dataflow starts one per vCPU; a worker pool one per task slot). In-process runs are one process."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner not in ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner"):
        return True
    direct = options.view_as(DirectOptions)
    return direct.direct_running_mode == "multi_processing" and direct.direct_num_workers != 1


def build_pipeline(pipeline: beam.Pipeline, config: ScoreConfig, plan: RunPlan) -> dict:
    """Attaches read → join → validate → featurize → infer → write → commit; returns the labelled outputs."""
    schema = plan.schema
    columns = schema.columns
    customer_tasks = plan_read_tasks(plan.customer_files, config.rows_per_read_task)
    review_tasks = plan_read_tasks(plan.review_files, config.rows_per_read_task)

    # Each list of read tasks is spread by an explicit Reshuffle (which also spreads a single task); Create's own
    # reshuffle would shuffle them once more first (measured: 3 fewer stages, ~0.5 s less at 2M reviews).
    customer_batches = (
        pipeline
        | "CustomerFiles" >> beam.Create(customer_tasks, reshuffle=False)
        | "SpreadCustomerFiles" >> beam.Reshuffle()
        | "ReadCustomers"
        >> beam.ParDo(ReadParquetBatches(schema.customers_schema(), max(config.read_batch_size, CUSTOMER_BATCH_ROWS)))
        | "CustomerBatches" >> beam.Values()
    )
    # Broadcast the customer table while its estimated size fits broadcast_limit_mb, else a keyed shuffle join.
    join_plan = JoinPlan.for_files(
        plan.customer_files,
        sum(plan.rows_by_partition.values()),
        columns,
        schema.customer_id_kind == "string",
        config.broadcast_limit_mb,
    )
    _LOG.info("%s", join_plan.describe())

    # The id pass and the full read start from their own copies of the read tasks: reading reviews from the same
    # PCollection as the ids would fuse it into the ids' stage, which has to finish (the duplicates side input)
    # before Validate runs, so every review table would be held in memory (or shipped between workers) at once.
    review_id_files = (
        pipeline
        | "ReviewIdFiles" >> beam.Create(review_tasks, reshuffle=False)
        | "SpreadReviewIdFiles" >> beam.Reshuffle()
    )
    review_files = (
        pipeline | "ReviewFiles" >> beam.Create(review_tasks, reshuffle=False) | "SpreadReviewFiles" >> beam.Reshuffle()
    )
    # The shuffle join, and the filter that keeps only the customers some review asks for, need the reviews'
    # customer ids too.
    id_columns = [columns.review_id] + (
        [columns.customer_id] if join_plan.buckets or join_plan.filter_customers else []
    )
    id_schema = pa.schema(
        [schema.reviews_schema().field(name) for name in id_columns]
        + [pa.field(FILE_INDEX, pa.int32()), pa.field(ROW_INDEX, pa.int64())]
    )
    id_reads = review_id_files | "ReadReviewIds" >> beam.ParDo(
        ReadParquetBatches(id_schema, max(config.read_batch_size, 65536), isolate_failures=True)
    ).with_outputs(FAILURES, main="ids")
    duplicates = id_reads.ids | "FindDuplicateReviews" >> FindDuplicateReviews(columns, plan.rows_by_partition)
    reviews = review_files | "ReadReviews" >> beam.ParDo(
        ReadParquetBatches(schema.reviews_schema(), config.read_batch_size, isolate_failures=True)
    ).with_outputs(FAILURES, main="tables")
    join = reviews.tables | "JoinCustomers" >> JoinCustomers(customer_batches, id_reads.ids, columns, join_plan)
    customers = join["customers"]  # the customer-table facts for the summary
    validated = join["joined"] | "Validate" >> beam.ParDo(
        ValidateRows(schema), duplicates=beam.pvalue.AsMultiMap(duplicates)
    ).with_outputs(ValidateRows.REJECTS, main="valid")
    # One bundle per worker process for featurizing and scoring, pinned to the version the launcher planned with.
    bundle = PinnedBundle(plan.model_dir, plan.model_version)
    rows = sum(plan.rows_by_partition.values())
    runtime = choose_runtime(config.runtime, rows)
    _LOG.info("model runtime %s (setting %r, %d review rows)", runtime, config.runtime, rows)
    threads = threads_per_process(pipeline.options, config.background_threads)
    featurized = validated.valid | "Featurize" >> Featurize(bundle, schema, threads)
    # The tensorflow runtime is loaded once per machine and shared by its worker processes (RunInference's
    # share_model_across_processes): measured with multi_processing x2 at 1M reviews, 2.40 -> 1.94 GB in all at the
    # same speed. litert is not shared: it saves 0.08 GB and costs 0.69 x the speed (every call crosses processes).
    share = runtime == TENSORFLOW and several_processes_per_machine(pipeline.options)
    handler = ReviewModelHandler(
        bundle, schema, runtime, config.inference_batch_size, config.jit_compile, threads, share_across_processes=share
    )
    inferred = featurized.rows | "Infer" >> ScoreReviews(handler)
    rejects = (
        validated[ValidateRows.REJECTS],
        featurized[Featurize.REJECTS],
        inferred[ScoreReviews.REJECTS],
    ) | "CollectRejects" >> beam.Flatten()
    failures = (
        id_reads[FAILURES],
        reviews[FAILURES],
        featurized[FAILURES],
        inferred[FAILURES],
    ) | "CollectFailures" >> beam.Flatten()

    score_shards = inferred.scores | "WriteScores" >> beam.ParDo(
        WriteParquetShards("scores", plan.staging_root, schema.scores_schema(), plan.run_id)
    )
    reject_shards = rejects | "WriteRejects" >> beam.ParDo(
        WriteParquetShards("rejects", plan.staging_root, schema.rejects_schema(), plan.run_id)
    )
    vocabulary = (
        featurized[Featurize.STATS]
        | "SumVocabularyStats" >> beam.CombinePerKey(_sum_pairs)
        | "VocabularyRecords" >> beam.Map(_vocabulary_record)
    )
    partitions = pipeline | "Partitions" >> beam.Create([(p, {"kind": "partition"}) for p in plan.partitions])
    run_info = {
        "run_id": plan.run_id,
        "started_at": plan.started_at,
        "model_version": plan.model_version,
        "model_dir": plan.model_dir,
        "review_files": plan.files_by_partition,
        "customer_files": [f.path for f in plan.customer_files],
    }
    schemas = {"scores": schema.scores_schema(), "rejects": schema.rejects_schema()}
    results = (
        (score_shards, reject_shards, vocabulary, failures, partitions)
        | "CollectPartitionRecords" >> beam.Flatten()
        | "GroupByPartition" >> beam.GroupByKey()
        | "CommitPartitions"
        >> beam.ParDo(
            CommitPartition(
                plan.output,
                plan.staging_root,
                run_info,
                plan.rows_by_partition,
                schemas,
                config.psi_threshold,
                config.max_reject_fraction,
            ),
            customers_summary=beam.pvalue.AsSingleton(customers | "CustomerSummary" >> beam.Map(lambda t: t.summary())),
        )
    )
    run_summary = (
        results
        | "GatherResults" >> beam.combiners.ToList()
        | "WriteRunSummary" >> beam.ParDo(WriteRunSummary(plan.staging_root, plan.run_id, plan.partitions))
    )
    return {"scores": inferred.scores, "rejects": rejects, "results": results, "run_summary": run_summary}
