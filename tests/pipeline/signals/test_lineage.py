"""OpenLineage events that name what exists: datasets by OpenLineage's naming, checked against the vendored schema
(tests/pipeline/signals/openlineage/, see SOURCE.md), for both output formats, published and failed (issue 25, 11)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from pipeline.publish.factory import publisher_for
from pipeline.publish.publisher import ICEBERG, PARQUET, RowCounts
from pipeline.publish.results import PartitionResult
from pipeline.run.config import build_config
from pipeline.run.plan import RunPlan
from pipeline.run.telemetry import RunSignals
from pipeline.signals.lineage import dataset_name, lineage_run_id, symlink_namespace
from tests.conftest import SAMPLE_DATE, score_args
from tests.pipeline.publish.test_output_identity import publish_iceberg, publish_parquet
from transforms.schema import RunSchema

SPEC = Path(__file__).parent / "openlineage"
DAY = "2026-03-01"


def _resource(uri: str) -> Resource:
    """A vendored schema by the file name its URI ends in (the versions in $ids and _schemaURLs move apart)."""
    name = uri.split("#")[0].rsplit("/", 1)[-1]
    path = SPEC / name if name == "OpenLineage.json" else SPEC / "facets" / name
    return Resource.from_contents(json.loads(path.read_text()))


REGISTRY = Registry(retrieve=_resource)


def _facets(event: dict) -> list[dict]:
    """Every facet of an event: the run's, the job's, and each dataset's (also input and output facets)."""
    found = [*event["run"].get("facets", {}).values(), *event["job"].get("facets", {}).values()]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        for key in ("facets", "inputFacets", "outputFacets"):
            found += dataset.get(key, {}).values()
    return found


def validate(event: dict) -> None:
    """Raises jsonschema.ValidationError unless the event and every facet match the vendored OpenLineage schemas."""
    core = json.loads((SPEC / "OpenLineage.json").read_text())
    jsonschema.Draft202012Validator(core, registry=REGISTRY).validate(event)
    for facet in _facets(event):
        jsonschema.Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=REGISTRY).validate(facet)


def file_datasets(event: dict) -> list[str]:
    return [d["name"] for d in event.get("inputs", []) + event.get("outputs", []) if d["namespace"] == "file"]


def events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _inputs(tmp_path) -> tuple[Path, Path]:
    customers, reviews = tmp_path / "in" / "customers", tmp_path / "in" / "reviews"
    (reviews / f"dt={DAY}").mkdir(parents=True)
    customers.mkdir(parents=True)
    return customers, reviews


def _signals(tmp_path, output_format: str, status: str) -> list[dict]:
    """One run's events through RunSignals, over a real output published (or not) by the format's publisher."""
    root = tmp_path / "out"
    if output_format == PARQUET:
        publish_parquet(root, DAY)
    else:
        publish_iceberg(tmp_path, root, DAY)
    customers, reviews = _inputs(tmp_path)
    lineage = tmp_path / "lineage.jsonl"
    config = build_config({"lineage_file": str(lineage), "output": str(root), "output_format": output_format})
    signals = RunSignals(config, "score", [DAY])
    plan = RunPlan(
        run_id="20260301T020000Z-0badc0de",
        started_at=0.0,
        schema=RunSchema(),
        model_version="v1",
        customer_files=[],
        review_files=[],
        partitions=[DAY],
        rows_by_partition={DAY: 6},
        files_by_partition={DAY: []},
        output=str(root),
        publisher=publisher_for(str(root), output_format),
        customers_root=str(customers),
        reviews_root=str(reviews),
    )
    signals.start(plan)
    signals.record([PartitionResult(DAY, status, status, RowCounts(read=6, scored=5, rejected=1))])
    signals.end(0 if status == "published" else 1)
    return events(lineage)


# --------------------------------------------------------------------------------------------------- naming


def test_datasets_are_named_by_openlineages_rules():
    assert dataset_name("/data/out") == ("file", "/data/out")
    assert dataset_name("file:///data/out/warehouse/sentiment/review_scores") == (
        "file",
        "/data/out/warehouse/sentiment/review_scores",
    )
    assert dataset_name("s3://bucket/scores/") == ("s3://bucket", "scores")  # the key: no leading slash
    assert dataset_name("s3a://bucket/a/b") == ("s3://bucket", "a/b")
    assert dataset_name("gs://bucket/a") == ("gs://bucket", "a")
    assert dataset_name("/data/o#1?x%41") == ("file", "/data/o#1?x%41")
    assert symlink_namespace("file:///data/out/warehouse") == "file:/data/out/warehouse"
    assert symlink_namespace("/data/o#1/warehouse") == "file:/data/o#1/warehouse"
    assert symlink_namespace("http://rest-catalog:8181/") == "http://rest-catalog:8181"


# ---------------------------------------------------------------------------------------- events, validated


def test_an_iceberg_run_names_both_tables_by_location_with_their_catalog_names(tmp_path):
    start, complete = _signals(tmp_path, ICEBERG, "published")
    for event in (start, complete):
        validate(event)
        assert all(os.path.exists(name) for name in file_datasets(event)), file_datasets(event)
        assert not any("dt=" in name for name in file_datasets(event))
    scores, rejects = complete["outputs"]
    warehouse = tmp_path / "out" / "warehouse"
    for dataset, table in ((scores, "sentiment.review_scores"), (rejects, "sentiment.review_rejects")):
        assert dataset["namespace"] == "file" and dataset["name"].startswith(f"{warehouse}/")
        (symlink,) = dataset["facets"]["symlinks"]["identifiers"]
        assert symlink == {"namespace": f"file:{warehouse}", "name": table, "type": "TABLE"}
        assert dataset["outputFacets"]["subset"]["outputCondition"]["partitions"] == [
            {"dimensions": {"dt": DAY}, "identifier": f"dt={DAY}"}
        ]
    assert scores["outputFacets"]["outputStatistics"]["rowCount"] == 5
    assert rejects["outputFacets"]["outputStatistics"]["rowCount"] == 1
    assert {f["name"] for f in rejects["facets"]["schema"]["fields"]} >= {"reason", "detail"}


def test_a_parquet_run_names_the_output_and_the_reviews_by_their_roots_with_the_day_in_a_facet(tmp_path):
    start, complete = _signals(tmp_path, PARQUET, "published")
    for event in (start, complete):
        validate(event)
        assert all(os.path.exists(name) for name in file_datasets(event)), file_datasets(event)
    customers, reviews = complete["inputs"]
    assert customers["name"] == str(tmp_path / "in" / "customers")
    assert reviews["name"] == str(tmp_path / "in" / "reviews")
    assert reviews["inputFacets"]["subset"]["inputCondition"]["partitions"][0]["dimensions"] == {"dt": DAY}
    (output,) = complete["outputs"]
    assert output["name"] == str(tmp_path / "out")
    assert output["outputFacets"]["subset"]["outputCondition"]["partitions"][0]["identifier"] == f"dt={DAY}"
    run, job = complete["run"]["facets"], complete["job"]["facets"]
    assert run["nominalTime"]["nominalStartTime"] == f"{DAY}T00:00:00Z"
    assert run["nominalTime"]["nominalEndTime"] == "2026-03-02T00:00:00Z"
    assert run["processing_engine"]["name"] == "Apache Beam"
    assert (job["jobType"]["processingType"], job["jobType"]["jobType"]) == ("BATCH", "JOB")


@pytest.mark.parametrize("output_format", [PARQUET, ICEBERG])
def test_a_failed_day_names_no_output_and_its_fail_event_validates(tmp_path, output_format):
    start, fail = _signals(tmp_path, output_format, "failed")
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    validate(fail)
    assert fail["outputs"] == []
    assert fail["run"]["facets"]["errorMessage"]["message"]


def test_the_validator_refuses_an_event_the_schema_does_not_allow(tmp_path):
    _, complete = _signals(tmp_path, PARQUET, "published")
    broken = json.loads(json.dumps(complete))
    broken["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] = "five"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    del complete["run"]["runId"]
    with pytest.raises(jsonschema.ValidationError):
        validate(complete)


# ------------------------------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_an_iceberg_score_emits_valid_events_naming_tables_that_exist(sample_dir, bundle_dir, tmp_path):
    lineage = tmp_path / "lineage.jsonl"
    args = score_args(sample_dir, bundle_dir, tmp_path / "out", "--runner=FnApiRunner", "--output-format", ICEBERG)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--lineage-file", str(lineage)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    start, complete = events(lineage)
    for event in (start, complete):
        validate(event)
        assert all(os.path.exists(name) for name in file_datasets(event)), file_datasets(event)
        assert not any("dt=" in name for name in file_datasets(event))
    assert {d["name"] for d in complete["inputs"]} == {str(sample_dir / "customers"), str(sample_dir / "reviews")}
    tables = [d["facets"]["symlinks"]["identifiers"][0]["name"] for d in complete["outputs"]]
    assert tables == ["sentiment.review_scores", "sentiment.review_rejects"]
    assert complete["run"]["runId"] == lineage_run_id(complete_run_id(tmp_path / "out"))
    assert complete["run"]["facets"]["nominalTime"]["nominalStartTime"] == f"{SAMPLE_DATE}T00:00:00Z"


def complete_run_id(root) -> str:
    """The run id of the day's snapshot (what the OpenLineage run id is derived from)."""
    from pipeline.publish.iceberg_tables import OutputTables

    return OutputTables(str(root)).verify(SAMPLE_DATE)[1].split(" run ")[1].split(",")[0]
