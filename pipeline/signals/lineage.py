"""A run as OpenLineage events (START, then COMPLETE or FAIL) to a file and/or an HTTP endpoint such as Marquez."""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid

import pyarrow as pa

from pipeline.errors import ConfigError
from transforms.io import partition_path
from transforms.schema import FILE_INDEX, ROW_INDEX

_LOG = logging.getLogger("sentiment-score")

PRODUCER = "https://github.com/review-sentiment-scoring/sentiment-score"
DEFAULT_NAMESPACE = "sentiment-score"
# The keys of the config's lineage: block (the HTTP transport and the job's names).
LINEAGE_KEYS = {"url", "endpoint", "api_key", "timeout", "namespace", "job_name"}
# Run ids are mapped into this namespace (uuid5), so the same run id always gives the same OpenLineage run id.
RUN_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, PRODUCER)


def lineage_run_id(run_id: str) -> str:
    """The OpenLineage run id (a UUID) of a sentiment-score run id, derived deterministically with uuid5."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, run_id))


def check_lineage_block(block: dict, source: str = "config") -> dict:
    """The lineage: block, checked: known keys, strings where strings go, a positive timeout."""
    unknown = sorted(set(block) - LINEAGE_KEYS)
    if unknown:
        known = ", ".join(sorted(LINEAGE_KEYS))
        raise ConfigError(f"{source}: unknown setting 'lineage.{unknown[0]}' (known: {known})")
    for key in LINEAGE_KEYS - {"timeout"}:
        if key in block and not (isinstance(block[key], str) and block[key]):
            raise ConfigError(f"{source}: setting 'lineage.{key}' must be a non-empty string")
    timeout = block.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{source}: setting 'lineage.timeout' must be a positive number of seconds")
    return block


def parse_parent(value: str) -> tuple[str, str, str]:
    """NAMESPACE/JOB/RUN_ID (what Airflow's OpenLineage provider macro lineage_parent_id renders) → its parts."""
    parts = value.rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"setting 'lineage_parent' must be NAMESPACE/JOB_NAME/RUN_ID, got {value!r}")
    try:
        uuid.UUID(parts[2])
    except ValueError:
        raise ConfigError(f"setting 'lineage_parent': run id {parts[2]!r} is not a UUID") from None
    return parts[0], parts[1], parts[2]


def dataset_name(path: str) -> tuple[str, str]:
    """(namespace, name) of a file or folder by OpenLineage's naming: scheme://bucket and the key, or file and the
    absolute path."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        bucket, _, key = rest.partition("/")
        return f"{scheme}://{bucket}", "/" + key
    return "file", os.path.abspath(path)


def common_folder(paths: list[str]) -> str:
    """The deepest folder holding every path (a partition's review files share their dt= folder)."""
    folders = {p.rsplit("/", 1)[0] for p in paths}
    if len(folders) == 1:
        return folders.pop()
    prefix = os.path.commonprefix(sorted(folders))
    return prefix.rsplit("/", 1)[0] if not prefix.endswith("/") else prefix.rstrip("/")


class Lineage:
    """Emits one run's events through openlineage-python's client, to every transport the config names.

    A lineage backend that cannot be reached costs a warning, never the run.
    """

    def __init__(self, lineage_file: str | None, block: dict, command: str, parent: str | None = None):
        from openlineage.client import OpenLineageClient
        from openlineage.client.transport.file import FileConfig, FileTransport
        from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport

        check_lineage_block(block)
        self.namespace = block.get("namespace", DEFAULT_NAMESPACE)
        self.job_name = block.get("job_name", f"review_sentiment.{command}")
        self.parent = parse_parent(parent) if parent else None
        self.clients = []
        if lineage_file:
            os.makedirs(os.path.dirname(os.path.abspath(lineage_file)), exist_ok=True)
            transport = FileTransport(FileConfig(log_file_path=lineage_file, append=True))
            self.clients.append(OpenLineageClient(transport=transport))
        if block.get("url"):
            http = {"url": block["url"], "timeout": float(block.get("timeout", 5.0))}
            if "endpoint" in block:
                http["endpoint"] = block["endpoint"]
            if "api_key" in block:
                http["auth"] = ApiKeyTokenProvider({"api_key": block["api_key"]})
            self.clients.append(OpenLineageClient(transport=HttpTransport(HttpConfig(**http))))

    def _run(self, run_id: str, error: str | None):
        from openlineage.client.event_v2 import Run
        from openlineage.client.facet_v2 import error_message_run, parent_run

        facets = {}
        if self.parent:
            namespace, name, parent_id = self.parent
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent_id), job=parent_run.Job(namespace=namespace, name=name)
            )
        if error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="python")
        return Run(runId=lineage_run_id(run_id), facets=facets)

    def emit(self, state: str, run_id: str, inputs: list, outputs: list, error: str | None = None) -> None:
        """Sends one RunEvent (state START, COMPLETE or FAIL) to every transport."""
        from openlineage.client.event_v2 import Job, RunEvent, RunState

        event = RunEvent(
            eventType=RunState[state],
            eventTime=dt.datetime.now(dt.UTC).isoformat(),
            run=self._run(run_id, error),
            job=Job(namespace=self.namespace, name=self.job_name),
            inputs=inputs,
            outputs=outputs,
            producer=PRODUCER,
        )
        for client in self.clients:
            try:
                client.emit(event)
            except Exception as e:  # lineage is reporting: it must not fail the run it reports
                _LOG.warning("could not send the OpenLineage %s event: %s", state, e)


def schema_facet(schema: pa.Schema):
    """The columns of a dataset as the job reads or writes them (the row-tracking columns left out)."""
    from openlineage.client.facet_v2 import schema_dataset

    fields = [f for f in schema if f.name not in (FILE_INDEX, ROW_INDEX)]
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in fields]
    )


def input_datasets(plan) -> list:
    """The customers and each partition's review files (one dataset per partition folder), with their schemas."""
    from openlineage.client.event_v2 import InputDataset

    datasets = []
    customers = [f.path for f in plan.customer_files]
    if customers:
        namespace, name = dataset_name(common_folder(customers))
        facets = {"schema": schema_facet(plan.schema.customers_schema())}
        datasets.append(InputDataset(namespace=namespace, name=name, facets=facets))
    reviews = plan.schema.reviews_schema()
    for partition in plan.partitions:
        files = plan.files_by_partition.get(partition) or []
        if not files:
            continue
        namespace, name = dataset_name(common_folder(files))
        datasets.append(InputDataset(namespace=namespace, name=name, facets={"schema": schema_facet(reviews)}))
    return datasets


def output_datasets(output: str, results: list[dict], schema=None) -> list:
    """Each published partition with its row count (scored rows) in an outputStatistics facet."""
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset

    datasets = []
    for result in results:
        if result["status"] != "published":
            continue
        namespace, name = dataset_name(partition_path(output, result["partition"]))
        rows = (result.get("rows") or {}).get("scored")
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
        facets = {"schema": schema_facet(schema)} if schema is not None else {}
        outputs = {"outputStatistics": statistics}
        datasets.append(OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=outputs))
    return datasets
