"""Committing a partition: check the row invariant and the reject ceiling, write summary and report, publish (the
commit step of the graph, CommitPartitions). What it yields per partition: pipeline/publish/results.py."""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import storage
from pipeline.errors import JobError
from pipeline.publish import lease
from pipeline.publish.parquet import footer_rows
from pipeline.publish.publisher import PartitionFacts, Publisher, RowCounts
from pipeline.publish.results import PartitionResult, Status, WriteRunSummary
from pipeline.signals import report
from transforms.io import Shard
from transforms.schema import REASON, SCORE, PartitionFailure

_LOG = logging.getLogger(__name__)
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}


def _read_column(path: str, column: str) -> pa.Array:
    with FileSystems.open(path) as f:
        table = pq.read_table(f, columns=[column])
    return table[column].combine_chunks()


def score_statistics(scores: np.ndarray) -> dict:
    if len(scores) == 0:
        return {}
    values = np.quantile(scores.astype(np.float64), list(QUANTILES.values()))
    stats = {name: float(v) for name, v in zip(QUANTILES, values)}
    stats.update(min=float(scores.min()), max=float(scores.max()), mean=float(scores.astype(np.float64).mean()))
    return stats


def _empty_shard(staging_dir: str, kind: str, schema: pa.Schema, run_id: str) -> str:
    path = FileSystems.join(staging_dir, f"{kind}-{run_id}-empty.parquet")
    sink = io.BytesIO()
    pq.write_table(schema.empty_table(), sink)
    storage.write_atomically(path, sink.getvalue())
    return path


def _discard(paths: list[str]) -> None:
    """Removes a refused partition's staged shards; best effort (the next run's cleanup catches what is left)."""
    existing = [p for p in paths if storage.exists(p)]
    if existing:
        try:
            storage.delete(existing)
        except Exception as e:
            _LOG.warning("could not remove %d staged shard(s): %s", len(existing), e)


def top_reasons(reasons: dict[str, int], n: int = 3) -> str:
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:n]
    return ", ".join(f"{reason} {count}" for reason, count in ranked) or "none"


@dataclass(frozen=True)
class VocabularyCounts:
    """A partition's words seen by the tokenizer and those out of its vocabulary (summed over the partition)."""

    words: int
    oov: int


class Refused(JobError):
    """A partition that is not published: the message says why; rows are what was counted before it was refused."""

    def __init__(self, message: str, rows: RowCounts | None = None):
        super().__init__(message)
        self.rows = rows


class CommitPartition(beam.DoFn):
    """Publishes one partition once all its shards are written (through the run's Publisher), or refuses it.

    A partition is refused, and not published, when the run no longer holds its lease, when a stage reported a
    failure for it (an unreadable file, a model failing on every call), when its rows do not add up (scored +
    rejected != read), when more than max_reject_fraction of its rows were rejected, or when publishing fails. Other
    partitions of the run are published all the same. Yields one result per partition: {"partition", "output",
    "status": "published" | "failed", "message", "rows", "summary"}.
    """

    def __init__(
        self,
        publisher: Publisher,
        staging_root: str,
        run_info: dict,
        expected_rows: dict,
        schemas: dict,
        psi_threshold: float,
        max_reject_fraction: float = 0.1,
    ):
        self._publisher = publisher
        self._staging_root = staging_root
        self._run_info = run_info
        self._expected = expected_rows
        self._schemas = schemas
        self._psi_threshold = psi_threshold
        self._max_reject_fraction = max_reject_fraction

    def process(self, element, customers_summary):
        partition, records = element
        records = list(records)
        shards = [r for r in records if isinstance(r, Shard)]
        try:
            self._renew(partition)
            rows, reasons = self._check(partition, shards, [r for r in records if isinstance(r, PartitionFailure)])
            shards = shards + self._empty_shards(partition, shards)
            vocabulary = [r for r in records if isinstance(r, VocabularyCounts)]
            summary, reports = self._summarise(partition, shards, rows, reasons, vocabulary, customers_summary)
            self._publish(partition, shards, rows, reasons, reports)
        except Refused as e:
            _discard([s.path for s in shards])
            lease.release_all(self._held(partition), self._run_info["run_id"])
            _LOG.error("not published: %s: %s", self._publisher.name(partition), e)
            yield PartitionResult.failed(partition, str(e), e.rows, self._publisher.name(partition))
            return
        lease.release_all(self._held(partition), self._run_info["run_id"])
        _LOG.info("published %s: %d scored, %d rejected", self._publisher.name(partition), rows.scored, rows.rejected)
        name = self._publisher.name(partition)
        yield PartitionResult(partition, Status.PUBLISHED, "published", rows, name, summary)

    def _renew(self, partition: str) -> None:
        """The pipeline renews its own lease before committing, also when nobody waits on it (--no-wait)."""
        info, name = self._run_info, self._publisher.name(partition)
        try:
            lease.renew_all(self._held(partition), info["run_id"], info["lease_expiry_seconds"], name)
        except (lease.LeaseHeld, lease.LeaseError) as e:
            raise Refused(str(e)) from None

    def _held(self, partition: str) -> dict:
        """The partition's leases as {lease folder: generation}: the fencing tokens the launcher was given (a lease
        taken without one, generation None, counts as held while its newest generation is this run's)."""
        held = self._run_info.get("leases", {}).get(partition)
        if held is None:
            held = {scope.directory: None for scope in self._publisher.lease_scopes(partition)}
        return held

    def _check(self, partition: str, shards: list[Shard], failures: list[PartitionFailure]) -> tuple[RowCounts, dict]:
        """The rows read, scored and rejected, and the rejects by reason, once every check passed."""
        read = self._expected[partition]
        counts = {"scores": 0, "rejects": 0}
        for shard in shards:
            counts[shard.kind] += shard.rows
        rows = RowCounts(read, counts["scores"], counts["rejects"])
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more failure(s))" if len(failures) > 1 else ""
            raise Refused(f"{first.stage} failed: {first.message}{more}", rows)
        for shard in shards:
            on_disk = footer_rows(shard.path)
            if on_disk != shard.rows:
                raise Refused(f"{shard.path}: holds {on_disk} rows, its writer wrote {shard.rows}", rows)
        if counts["scores"] + counts["rejects"] != read:
            raise Refused(
                f"scored {counts['scores']} + rejected {counts['rejects']} != read {read}; rows were lost", rows
            )
        reasons: dict[str, int] = {}
        for path in sorted(s.path for s in shards if s.kind == "rejects"):
            counted = pc.value_counts(_read_column(path, REASON))
            for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
                reasons[value] = reasons.get(value, 0) + count
        fraction = counts["rejects"] / read if read else 0.0
        if fraction > self._max_reject_fraction:
            raise Refused(
                f"{fraction:.1%} of {read} rows rejected (top reasons: {top_reasons(reasons)}), above "
                f"max_reject_fraction {self._max_reject_fraction:g} (setting max_reject_fraction / "
                f"--max-reject-fraction)",
                rows,
            )
        return rows, dict(sorted(reasons.items()))

    def _empty_shards(self, partition: str, shards: list[Shard]) -> list[Shard]:
        """An empty shard of each kind no writer wrote, so every published partition has both files."""
        staged, run_id = self._publisher.staging_dir(self._staging_root, partition), self._run_info["run_id"]
        return [
            Shard(kind, _empty_shard(staged, kind, self._schemas[kind], run_id), 0)
            for kind in ("scores", "rejects")
            if not any(s.kind == kind for s in shards)
        ]

    def _summarise(self, partition, shards, rows, reasons, vocabulary, customers_summary) -> tuple[dict, dict]:
        """summary.json and the report files of the partition."""
        info = self._run_info
        words = sum(v.words for v in vocabulary)
        oov = sum(v.oov for v in vocabulary)
        score_files = sorted(s.path for s in shards if s.kind == "scores")
        scores = np.concatenate([_read_column(p, SCORE).to_numpy(zero_copy_only=False) for p in score_files])
        wall = time.time() - info["started_at"]
        summary = {
            "status": "ok",
            "date": partition or None,
            "model_version": info["model_version"],
            "model_dir": info.get("model_dir"),
            "run_id": info["run_id"],
            "output": self._publisher.name(partition),
            "input_files": {"reviews": info["review_files"].get(partition, []), "customers": info["customer_files"]},
            "rows": rows.to_dict(),
            "rejected_by_reason": reasons,
            "reject_fraction": round(rows.rejected / rows.read if rows.read else 0.0, 6),
            "customers": customers_summary,
            "score_quantiles": score_statistics(scores),
            "score_histogram": report.score_histogram(scores),
            "oov_rate": (oov / words) if words else None,
            "words": words,
            "wall_time_seconds": round(wall, 3),
            "rows_per_second": round(rows.read / wall, 1) if wall > 0 else None,
        }
        previous = self._publisher.previous_summary(partition)
        reports: dict[str, bytes] = {}
        drift = report.write_report(reports.__setitem__, summary, previous, self._psi_threshold)
        summary["drift"] = {**drift, "threshold": self._psi_threshold, "previous_date": (previous or {}).get("date")}
        reports[self._publisher.summary_report] = json.dumps(summary, indent=2, sort_keys=True).encode("utf-8")
        return summary, reports

    def _publish(self, partition, shards, rows, reasons, reports) -> None:
        info = self._run_info
        facts = PartitionFacts(
            run_id=info["run_id"],
            model_version=info["model_version"],
            rows=rows,
            model_dir=info.get("model_dir"),
            partition=partition or None,
            rejected_by_reason=reasons,
        )
        held, name = self._held(partition), self._publisher.name(partition)
        try:
            self._publisher.publish(
                partition, shards, facts, reports, lambda: lease.fence_all(held, info["run_id"], name)
            )
        except lease.LeaseHeld as e:  # the fence: another run took the partition over while this one ran
            raise Refused(str(e), rows) from None
        except lease.LeaseError as e:  # the lease store cannot be read: not published, since nothing is fenced
            raise Refused(str(e), rows) from None
        except OSError as e:  # a full disk, an unwritable file: the previous partition stays as it was
            raise Refused(f"publishing failed: {e}", rows) from None


def _vocabulary_record(element):
    partition, counts = element
    return partition, VocabularyCounts(int(counts[0]), int(counts[1]))


def _sum_pairs(pairs):
    words = oov = 0
    for w, o in pairs:
        words += w
        oov += o
    return words, oov


class CommitPartitions(beam.PTransform):
    """{"scores", "rejects": (partition, Shard); "stats": (partition, (words, oov)); "failures": (partition,
    PartitionFailure)}
    → {"results": one result per partition, published or refused (CommitPartition); "run_summary": the list of
    them once written to the run summary (WriteRunSummary)}. Every planned partition gets a result, even one without
    a single row."""

    def __init__(self, plan, config, customers):
        super().__init__()
        self._plan = plan
        self._config = config
        self._customers = customers  # the customer table's facts, for the summary

    def expand(self, inputs: dict):
        plan, config = self._plan, self._config
        vocabulary = (
            inputs["stats"]
            | "SumVocabularyStats" >> beam.CombinePerKey(_sum_pairs)
            | "VocabularyRecords" >> beam.Map(_vocabulary_record)
        )
        partitions = inputs["scores"].pipeline | "Partitions" >> beam.Create([(p, None) for p in plan.partitions])
        run_info = {
            "leases": plan.leases,
            "lease_expiry_seconds": plan.lease_expiry_seconds,
            "run_id": plan.run_id,
            "started_at": plan.started_at,
            "model_version": plan.model_version,
            "model_dir": plan.model_dir,
            "review_files": plan.files_by_partition,
            "customer_files": [f.path for f in plan.customer_files],
        }
        schemas = plan.publisher.shard_schemas(plan.schema)
        commit = CommitPartition(
            plan.publisher,
            plan.staging_root,
            run_info,
            plan.rows_by_partition,
            schemas,
            config.psi_threshold,
            config.max_reject_fraction,
        )
        customers = self._customers | "CustomerSummary" >> beam.Map(lambda t: t.summary())
        results = (
            (inputs["scores"], inputs["rejects"], vocabulary, inputs["failures"], partitions)
            | "CollectPartitionRecords" >> beam.Flatten()
            | "GroupByPartition" >> beam.GroupByKey()
            | "Commit" >> beam.ParDo(commit, customers_summary=beam.pvalue.AsSingleton(customers))
        )
        run_summary = (
            results
            | "GatherResults" >> beam.combiners.ToList()
            | "WriteRunSummary" >> beam.ParDo(WriteRunSummary(plan.staging_root, plan.run_id, plan.partitions))
        )
        return {"results": results, "run_summary": run_summary}
