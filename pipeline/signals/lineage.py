"""A run as OpenLineage events (START, then COMPLETE or FAIL) to a file and/or an HTTP endpoint such as Marquez."""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid

import pyarrow as pa

from pipeline.errors import ConfigError
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


# Object stores OpenLineage names by scheme://bucket and the key (s3a and s3n are s3).
_OBJECT_STORES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs"}


def dataset_name(location: str) -> tuple[str, str]:
    """(namespace, name) of a file, folder or table location by OpenLineage's naming: `file` and the absolute path
    on local disk (a file:// URI too), scheme://bucket and the key on an object store, scheme://authority and the
    path otherwise. A folder dataset is named by its root: callers never pass a partition's folder."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif location.startswith("file:"):
        location = location[len("file:") :]
    if "://" not in location:
        return "file", os.path.abspath(location)
    scheme, rest = location.split("://", 1)
    authority, _, path = rest.partition("/")
    if scheme in _OBJECT_STORES:
        return f"{_OBJECT_STORES[scheme]}://{authority}", path.strip("/") or "/"
    return f"{scheme}://{authority}", "/" + path.strip("/")


def symlink_namespace(catalog: str) -> str:
    """The namespace of a catalog table's name (a symlink): a warehouse on local disk as file:PATH, as OpenLineage's
    file naming gives a Hadoop catalog's tables; a warehouse in a bucket or a catalog service by its URI."""
    if catalog.startswith("file:") or "://" not in catalog:
        return f"file:{dataset_name(catalog)[1]}"
    return catalog.rstrip("/")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"version": version("apache-beam"), "openlineageAdapterVersion": version("openlineage-python")}
    except PackageNotFoundError:  # not installed as a distribution (a source tree on the path)
        return {"version": "unknown"}


# The processing engine facet: the job runs on Apache Beam, reporting through openlineage-python.
_ENGINE = {"name": "Apache Beam", **_versions()}


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

    def _run(self, run_id: str, error: str | None, days: list[str]):
        from openlineage.client.event_v2 import Run
        from openlineage.client.facet_v2 import error_message_run, nominal_time_run, parent_run, processing_engine_run

        facets = {"processing_engine": processing_engine_run.ProcessingEngineRunFacet(**_ENGINE)}
        if days:  # the days the run scores: from the first's start to the last's end, whenever it actually ran
            first, last = min(days), max(days)
            end = dt.date.fromisoformat(last) + dt.timedelta(days=1)
            facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
                nominalStartTime=f"{first}T00:00:00Z", nominalEndTime=f"{end.isoformat()}T00:00:00Z"
            )
        if self.parent:
            namespace, name, parent_id = self.parent
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent_id), job=parent_run.Job(namespace=namespace, name=name)
            )
        if error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="python")
        return Run(runId=lineage_run_id(run_id), facets=facets)

    def emit(
        self,
        state: str,
        run_id: str,
        inputs: list,
        outputs: list,
        error: str | None = None,
        days: list[str] | None = None,
    ) -> None:
        """Sends one RunEvent (state START, COMPLETE, FAIL or RUNNING) to every transport. days: the days the run
        scores (its nominal time), [] or None for an unpartitioned run."""
        from openlineage.client.event_v2 import Job, RunEvent, RunState
        from openlineage.client.facet_v2 import job_type_job

        job_type = job_type_job.JobTypeJobFacet(processingType="BATCH", integration="APACHE_BEAM", jobType="JOB")
        event = RunEvent(
            eventType=RunState[state],
            eventTime=dt.datetime.now(dt.UTC).isoformat(),
            run=self._run(run_id, error, [d for d in days or [] if d]),
            job=Job(namespace=self.namespace, name=self.job_name, facets={"jobType": job_type}),
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


def _partitions(key: str, partitions: list[str]):
    """The partitions of a dataset a run read or wrote, by their key (the day): what the subset facet carries, so a
    folder dataset keeps its root's name instead of one dataset per key=value folder."""
    from openlineage.client.facet_v2 import base_subset_dataset

    return base_subset_dataset.PartitionSubsetCondition(
        partitions=[base_subset_dataset.Partition(dimensions={key: p}, identifier=f"{key}={p}") for p in partitions]
    )


def input_datasets(customers: tuple[str, pa.Schema] | None, reviews: tuple[str, pa.Schema], days: list[str], key: str):
    """The customers and the reviews, each by its root with its schema; the days read in the reviews' subset facet.

    customers, reviews: (root, schema). days: the planned days ([] for an unpartitioned run), named by key."""
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.facet_v2 import base_subset_dataset

    datasets = []
    if customers is not None:
        namespace, name = dataset_name(customers[0])
        datasets.append(InputDataset(namespace=namespace, name=name, facets={"schema": schema_facet(customers[1])}))
    namespace, name = dataset_name(reviews[0])
    input_facets = {}
    if days:
        input_facets["subset"] = base_subset_dataset.InputSubsetInputDatasetFacet(inputCondition=_partitions(key, days))
    facets = {"schema": schema_facet(reviews[1])}
    datasets.append(InputDataset(namespace=namespace, name=name, facets=facets, inputFacets=input_facets))
    return datasets


def output_datasets(datasets: list, results: list, schemas: dict[str, pa.Schema] | None = None) -> list:
    """The datasets published into (pipeline/publish's OutputDataset records: kinds, location, table, catalog,
    partition_key), once at least one of results (PartitionResult records) was published: each by its location, a
    catalog table's name in a symlinks facet, the published days in a subset facet, its rows (of its first kind) in
    outputStatistics."""
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import base_subset_dataset, output_statistics_output_dataset, symlinks_dataset

    published = [r for r in results if r.published]
    if not published:
        return []
    days = sorted(r.partition for r in published if r.partition)
    outputs = []
    for dataset in datasets:
        kind = dataset.kinds[0]
        rows = sum(r.rows.scored if kind == "scores" else r.rows.rejected for r in published)
        facets = {"schema": schema_facet(schemas[kind])} if schemas else {}
        if dataset.table:
            identifier = symlinks_dataset.Identifier(
                namespace=symlink_namespace(dataset.catalog), name=dataset.table, type="TABLE"
            )
            facets["symlinks"] = symlinks_dataset.SymlinksDatasetFacet(identifiers=[identifier])
        output_facets = {
            "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
        }
        if dataset.partition_key and days:
            output_facets["subset"] = base_subset_dataset.OutputSubsetOutputDatasetFacet(
                outputCondition=_partitions(dataset.partition_key, days)
            )
        namespace, name = dataset_name(dataset.location)
        outputs.append(OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=output_facets))
    return outputs
