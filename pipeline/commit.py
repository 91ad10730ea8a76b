"""Publishing a partition: check the row invariant, write summary and report, swap staging into place, then _SUCCESS."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import report
from transforms.io import partition_path
from transforms.schema import REASON, SCORE

_LOG = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
SUCCESS_FILE = "_SUCCESS"
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}


class InvariantError(RuntimeError):
    """Scored plus rejected rows do not add up to the rows read: the partition is not published."""


def _read_column(path: str, column: str) -> pa.Array:
    with FileSystems.open(path) as f:
        table = pq.read_table(f, columns=[column])
    return table[column].combine_chunks()


def _footer_rows(path: str) -> int:
    with FileSystems.open(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def score_statistics(scores: np.ndarray) -> dict:
    if len(scores) == 0:
        return {}
    values = np.quantile(scores.astype(np.float64), list(QUANTILES.values()))
    stats = {name: float(v) for name, v in zip(QUANTILES, values)}
    stats.update(min=float(scores.min()), max=float(scores.max()), mean=float(scores.astype(np.float64).mean()))
    return stats


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as f:
        f.write(data)


def _previous_summary(output: str, partition: str) -> dict | None:
    """The summary of the latest complete partition before this one (or of the last run, unpartitioned)."""
    if partition:
        pattern = FileSystems.join(output, "dt=*", SUCCESS_FILE)
        try:
            matches = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        except Exception:
            return None
        earlier = sorted(p for p in matches if p.split("dt=")[-1].split("/")[0] < partition)
        if not earlier:
            return None
        path = FileSystems.join(earlier[-1].rsplit("/", 1)[0], SUMMARY_FILE)
    else:
        path = FileSystems.join(output, SUMMARY_FILE)
    try:
        with FileSystems.open(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


def _empty_shard(staging_dir: str, kind: str, schema: pa.Schema) -> str:
    path = FileSystems.join(staging_dir, f"{kind}-empty.parquet")
    sink = io.BytesIO()
    pq.write_table(schema.empty_table(), sink)
    _write_bytes(path, sink.getvalue())
    return path


def _swap_into_place(staging_dir: str, final_dir: str, keep: set[str], trash_dir: str) -> None:
    """Replaces final_dir by staging_dir; on a local disk by two renames, elsewhere file by file."""
    if "://" not in final_dir:
        for name in os.listdir(staging_dir):
            if os.path.join(staging_dir, name) not in keep:
                os.remove(os.path.join(staging_dir, name))  # a retried bundle's shard, never published
        os.makedirs(os.path.dirname(os.path.abspath(final_dir)), exist_ok=True)
        if os.path.exists(final_dir):
            os.rename(final_dir, trash_dir)
        os.rename(staging_dir, final_dir)
        shutil.rmtree(trash_dir, ignore_errors=True)
        return
    # Object stores have no directory rename: first make the old partition incomplete, then replace its files.
    marker = FileSystems.join(final_dir, SUCCESS_FILE)
    if FileSystems.exists(marker):
        FileSystems.delete([marker])
    old = [m.path for r in FileSystems.match([FileSystems.join(final_dir, "*")]) for m in r.metadata_list]
    if old:
        FileSystems.delete(old)
    sources = sorted(keep)
    FileSystems.rename(sources, [FileSystems.join(final_dir, p.rsplit("/", 1)[-1]) for p in sources])


class CommitPartition(beam.DoFn):
    """Publishes one partition once all its shards are written; raises (failing the run) if rows were lost."""

    def __init__(
        self, output: str, staging_root: str, run_info: dict, expected_rows: dict, schemas: dict, psi_threshold: float
    ):
        self._output = output
        self._staging_root = staging_root
        self._run_info = run_info
        self._expected = expected_rows
        self._schemas = schemas
        self._psi_threshold = psi_threshold

    def process(self, element, customers_summary):
        partition, records = element
        records = list(records)
        shards = [r for r in records if r["kind"] in ("scores", "rejects")]
        words = sum(r["words"] for r in records if r["kind"] == "vocabulary")
        oov = sum(r["oov"] for r in records if r["kind"] == "vocabulary")
        staging_dir = partition_path(self._staging_root, partition)
        final_dir = partition_path(self._output, partition)

        counts = {"scores": 0, "rejects": 0}
        for shard in shards:
            on_disk = _footer_rows(shard["path"])
            if on_disk != shard["rows"]:
                raise InvariantError(f"{shard['path']}: holds {on_disk} rows, its writer wrote {shard['rows']}")
            counts[shard["kind"]] += shard["rows"]
        read = self._expected[partition]
        if counts["scores"] + counts["rejects"] != read:
            raise InvariantError(
                f"partition {partition or '(unpartitioned)'}: scored {counts['scores']} + rejected "
                f"{counts['rejects']} != read {read}; not published"
            )

        keep = {s["path"] for s in shards}
        for kind in ("scores", "rejects"):
            if not any(s["kind"] == kind for s in shards):
                keep.add(_empty_shard(staging_dir, kind, self._schemas[kind]))
        score_files = sorted(s["path"] for s in shards if s["kind"] == "scores")
        reject_files = sorted(s["path"] for s in shards if s["kind"] == "rejects")
        scores = (
            np.concatenate([_read_column(p, SCORE).to_numpy(zero_copy_only=False) for p in score_files])
            if score_files
            else np.zeros(0, dtype=np.float32)
        )
        reasons: dict[str, int] = {}
        for path in reject_files:
            counted = pc.value_counts(_read_column(path, REASON))
            for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
                reasons[value] = reasons.get(value, 0) + count

        wall = time.time() - self._run_info["started_at"]
        summary = {
            "status": "ok",
            "date": partition or None,
            "model_version": self._run_info["model_version"],
            "run_id": self._run_info["run_id"],
            "output": final_dir,
            "input_files": {
                "reviews": self._run_info["review_files"].get(partition, []),
                "customers": self._run_info["customer_files"],
            },
            "rows": {"read": read, "scored": counts["scores"], "rejected": counts["rejects"]},
            "rejected_by_reason": dict(sorted(reasons.items())),
            "customers": customers_summary,
            "score_quantiles": score_statistics(scores),
            "score_histogram": report.score_histogram(scores),
            "oov_rate": (oov / words) if words else None,
            "words": words,
            "wall_time_seconds": round(wall, 3),
            "rows_per_second": round(read / wall, 1) if wall > 0 else None,
        }
        previous = _previous_summary(self._output, partition)

        def writer(name: str, data: bytes) -> None:
            _write_bytes(FileSystems.join(staging_dir, name), data)
            keep.add(FileSystems.join(staging_dir, name))

        drift = report.write_report(writer, summary, previous, self._psi_threshold)
        summary["drift"] = {**drift, "threshold": self._psi_threshold, "previous_date": (previous or {}).get("date")}
        writer(SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))

        trash = FileSystems.join(self._staging_root, f"replaced-{partition or 'output'}")
        _swap_into_place(staging_dir, final_dir, keep, trash)
        _write_bytes(FileSystems.join(final_dir, SUCCESS_FILE), (self._run_info["run_id"] + "\n").encode())
        _LOG.info("published %s: %d scored, %d rejected", final_dir, counts["scores"], counts["rejects"])
        yield summary
