"""The records passed between steps: the rules they carry, and the JSON they are written as (a contract)."""

from __future__ import annotations

import json
import pickle

import pytest

from pipeline.publish.publisher import PartitionFacts, RowCounts
from pipeline.publish.results import PartitionResult, Status, write_run_summary

PUBLISHED = PartitionResult("2026-03-01", Status.PUBLISHED, "published", RowCounts(10, 8, 2), "OUT/dt=2026-03-01")
# Refused by the commit step (rows counted, named by the publisher), and failed before it (neither).
REFUSED = PartitionResult.failed(
    "2026-03-02", "scored 7 + rejected 2 != read 10", RowCounts(10, 7, 2), "OUT/dt=2026-03-02"
)
FAILED = PartitionResult.failed("2026-03-03", "run r failed: RuntimeError: boom")


def test_the_run_summary_holds_each_result_in_its_json_and_reads_back_as_the_same_record(tmp_path):
    record = write_run_summary(str(tmp_path), "r", [PUBLISHED, REFUSED, FAILED], {"2026-02-28": "no input"})
    with open(tmp_path / "_runs" / "r.json", encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == record
    assert on_disk["partitions"] == [
        {
            "partition": "2026-03-01",
            "output": "OUT/dt=2026-03-01",
            "status": "published",
            "message": "published",
            "rows": {"read": 10, "scored": 8, "rejected": 2},
        },
        {
            "partition": "2026-03-02",
            "output": "OUT/dt=2026-03-02",
            "status": "failed",
            "message": "scored 7 + rejected 2 != read 10",
            "rows": {"read": 10, "scored": 7, "rejected": 2},
        },
        {"partition": "2026-03-03", "status": "failed", "message": "run r failed: RuntimeError: boom", "rows": {}},
    ]
    assert on_disk["failed_partitions"] == ["2026-03-02", "2026-03-03"] and on_disk["status"] == "failed"
    assert [PartitionResult.from_dict(p) for p in on_disk["partitions"]] == [PUBLISHED, REFUSED, FAILED]


def test_rows_counted_as_zero_are_not_rows_never_counted():
    """The twin: the JSON tells {} (nothing counted) from zeros, so reading it back cannot turn one into the other."""
    zeros = PartitionResult.failed("2026-03-03", "refused", RowCounts(0, 0, 0))
    assert zeros.to_dict()["rows"] == {"read": 0, "scored": 0, "rejected": 0} != FAILED.to_dict()["rows"]
    assert PartitionResult.from_dict(zeros.to_dict()) == zeros != PartitionResult.from_dict(FAILED.to_dict())


def test_a_published_result_whose_rows_do_not_add_up_cannot_be_made():
    with pytest.raises(ValueError, match="2026-03-01: published, but its rows .* do not add up"):
        PartitionResult("2026-03-01", Status.PUBLISHED, "published", RowCounts(10, 7, 2))
    with pytest.raises(ValueError, match="do not add up"):
        PartitionResult.from_dict({**PUBLISHED.to_dict(), "rows": {}})


def test_a_failed_result_keeps_rows_that_do_not_add_up():
    """The twin: a refused partition says what was counted, lost rows included."""
    assert REFUSED.rows == RowCounts(10, 7, 2) and not REFUSED.rows.add_up and not REFUSED.published


def test_the_records_cross_worker_boundaries_by_pickle():
    summary = {"drift": {"psi": 0.1}}
    with_summary = PartitionResult("", Status.PUBLISHED, "published", RowCounts(3, 3, 0), "OUT", summary)
    assert pickle.loads(pickle.dumps(with_summary)).summary == summary
    for record in (PUBLISHED, REFUSED, FAILED, with_summary):
        assert pickle.loads(pickle.dumps(record)) == record


def test_partition_facts_are_written_in_the_manifests_key_order_and_read_back():
    facts = PartitionFacts("r", "v1", RowCounts(4, 3, 1), "models/v1", "2026-03-01", {"null_text": 1})
    assert list(facts.to_dict()) == ["run_id", "model_version", "model_dir", "partition", "rows", "rejected_by_reason"]
    manifest = {"format": "sentiment-partition-manifest/2", **facts.to_dict(), "files": []}
    assert PartitionFacts.from_dict(json.loads(json.dumps(manifest))) == facts


def test_partition_facts_read_from_another_run_differ():
    """The twin: reading back compares every fact, so another run's manifest is not these facts."""
    facts = PartitionFacts("r", "v1", RowCounts(4, 3, 1), "models/v1", "2026-03-01", {"null_text": 1})
    assert PartitionFacts.from_dict({**facts.to_dict(), "run_id": "other"}) != facts
    assert PartitionFacts.from_dict({**facts.to_dict(), "rows": {"read": 4, "scored": 4, "rejected": 0}}) != facts
