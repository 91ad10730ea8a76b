"""What a run tells the systems that watch it: a Prometheus metrics file or push, and OpenLineage events."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.publish.results import PartitionResult
from pipeline.run.config import ScoreConfig
from pipeline.run.plan import new_run_id

_LOG = logging.getLogger("sentiment-score")


@dataclasses.dataclass
class RunOutcome:
    """One run as the metrics see it: its partitions, their results, how it ended."""

    command: str
    run_id: str | None
    model_version: str | None
    partitions: list[str]
    results: list[PartitionResult]
    exit_code: int
    started_at: float
    ended_at: float
    # Submitted with --no-wait: exit 0 says the job was accepted, not that it published anything yet.
    submitted: bool = False

    @property
    def duration(self) -> float:
        return max(self.ended_at - self.started_at, 0.0)


def check_signals(config: ScoreConfig) -> None:
    """The signal settings, checked at start-up; a wrong one fails naming it."""
    from pipeline.signals.lineage import check_lineage_block, parse_parent

    if config.metrics_file is not None:
        if storage.is_remote(config.metrics_file):
            raise ConfigError("setting 'metrics_file' must be a local path (node_exporter's textfile collector)")
        if not config.metrics_file.endswith(".prom"):
            raise ConfigError(
                f"setting 'metrics_file' must end in .prom (the textfile collector reads only those), "
                f"got {config.metrics_file!r}"
            )
    if config.pushgateway is not None and not config.pushgateway:
        raise ConfigError("setting 'pushgateway' must be a URL")
    check_lineage_block(config.lineage)
    if config.lineage_file is not None:
        _check_folder_can_exist("lineage_file", config.lineage_file)
    if config.lineage_parent:
        parse_parent(config.lineage_parent)


def _check_folder_can_exist(setting: str, path: str) -> None:
    """Raises ConfigError naming the setting when a local file's folder cannot be made: a regular file is in the way."""
    if storage.is_remote(path):
        return
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"setting '{setting}' {path}: {existing} is not a folder")


class RunSignals:
    """Collects one run's start, plan and results, and at its end writes metrics and emits lineage.

    The launcher calls start(plan) once the run is planned, record(results) once its partitions are done, and
    end(exit_code) however it ended, start-up errors included. Reporting never changes a run's exit code: a
    metrics file or lineage backend that fails costs a warning.
    """

    def __init__(self, config: ScoreConfig, command: str, dates: list[str] | None = None):
        self.config = config
        self.command = command
        self.started_at = time.time()
        self.partitions = list(dates) if dates is not None else [""]
        self.plan = None
        self.results: list[PartitionResult] = []
        self.error: str | None = None
        self.ended = False
        self.lineage = None
        check_signals(config)
        if config.lineage_file or config.lineage.get("url"):
            from pipeline.signals.lineage import Lineage

            self.lineage = Lineage(config.lineage_file, config.lineage, command, config.lineage_parent)

    @property
    def run_id(self) -> str:
        """The run's id, known from the start: the launcher plans the run under it, so a run stopped at start-up
        names the same id in its metrics and events as it would have in its outputs."""
        if self.plan is not None:
            return self.plan.run_id
        if not hasattr(self, "_startup_id"):
            self._startup_id = new_run_id(self.started_at)
        return self._startup_id

    def start(self, plan) -> None:
        """The run is planned: its partitions, inputs and run id are known. Emits START."""
        self.plan = plan
        self.partitions = sorted([*plan.partitions, *plan.failed])  # days refused at start-up were planned too
        if self.lineage is not None:
            self.lineage.emit("START", plan.run_id, self._inputs(), [], days=self.partitions)

    def record(self, results: list[PartitionResult]) -> None:
        """The per-partition results."""
        self.results = [self._with_summary(r) for r in results]

    def fail(self, message: str) -> None:
        """Why the run stopped, when it stopped before its partitions had results (a start-up error)."""
        self.error = message

    def end(self, exit_code: int) -> None:
        """Writes the metrics and emits COMPLETE (exit 0) or FAIL; once per run."""
        if self.ended:
            return
        self.ended = True
        outcome = RunOutcome(
            command=self.command,
            run_id=self.run_id,
            model_version=self.plan.model_version if self.plan is not None else None,
            partitions=self.partitions,
            results=self.results,
            exit_code=exit_code,
            started_at=self.started_at,
            ended_at=time.time(),
            submitted=exit_code == 0 and self.plan is not None and bool(self.plan.partitions) and not self.results,
        )
        self._write_metrics(outcome)
        self._emit_end(outcome)

    def _with_summary(self, result: PartitionResult) -> PartitionResult:
        """A published result with its partition's summary (reject reasons, drift), read back if not carried."""
        if not result.published or result.summary or self.plan is None:
            return result
        try:
            summary = self.plan.publisher.published_summary(result.partition)
        except Exception:  # the metrics then lack the reasons and PSI; rows come from the result itself
            summary = None
        return dataclasses.replace(result, summary=summary) if summary else result

    def _write_metrics(self, outcome: RunOutcome) -> None:
        from pipeline.signals import metrics

        if self.config.metrics_file:
            try:
                metrics.write_metrics_file(self.config.metrics_file, outcome)
            except Exception as e:
                _LOG.warning("could not write the metrics file %s: %s", self.config.metrics_file, e)
        if self.config.pushgateway:
            try:
                metrics.push_metrics(self.config.pushgateway, outcome)
            except Exception as e:
                _LOG.warning("could not push metrics to %s: %s", self.config.pushgateway, e)

    def _inputs(self) -> list:
        """The planned run's inputs by their roots, the reviews' days in a facet (nothing before it is planned)."""
        from pipeline.signals.lineage import input_datasets
        from transforms.io import INPUT_PARTITION_KEY

        plan = self.plan
        if plan is None:
            return []
        customers = (plan.customers_root, plan.schema.customers_schema()) if plan.customers_root else None
        days = [p for p in plan.partitions if p]
        return input_datasets(customers, (plan.reviews_root, plan.schema.reviews_schema()), days, INPUT_PARTITION_KEY)

    def _outputs(self, results: list[PartitionResult]) -> list:
        """What the run published into, named by the publisher (pipeline/publish/publisher.py, OutputDataset)."""
        from pipeline.signals.lineage import output_datasets

        if self.plan is None or not any(r.published for r in results):
            return []
        schemas = {"scores": self.plan.schema.scores_schema(), "rejects": self.plan.schema.rejects_schema()}
        return output_datasets(self.plan.publisher.output_datasets(), results, schemas)

    def _emit_end(self, outcome: RunOutcome) -> None:
        if self.lineage is None:
            return
        inputs, days = self._inputs(), self.partitions
        if self.plan is None:  # stopped at start-up: START was never sent
            self.lineage.emit("START", self.run_id, [], [], days=days)
        if outcome.submitted:  # the job runs on; its end is not this process's to report
            self.lineage.emit("RUNNING", self.run_id, inputs, [], days=days)
            return
        try:
            outputs = self._outputs(outcome.results)
        except Exception as e:  # reporting never fails the run: the event goes out without its outputs
            _LOG.warning("could not name the run's outputs for lineage: %s", e)
            outputs = []
        if outcome.exit_code == 0:
            self.lineage.emit("COMPLETE", self.run_id, inputs, outputs, days=days)
            return
        failed = [r for r in outcome.results if not r.published]
        message = self.error or "; ".join(f"{r.partition or 'output'}: {r.message}" for r in failed)
        error = message or f"exit status {outcome.exit_code}"
        self.lineage.emit("FAIL", self.run_id, inputs, outputs, error, days=days)


def signal_startup_failure(overrides: dict, command: str, message: str, exit_code: int) -> None:
    """Metrics and lineage for a run whose config did not load: from the command line's signal flags alone."""
    keys = ("metrics_file", "pushgateway", "lineage_file", "lineage_parent")
    try:
        signals = RunSignals(ScoreConfig(**{k: overrides[k] for k in keys if k in overrides}), command)
    except ConfigError:  # a signal flag is itself what is wrong: nowhere sound to report to
        return
    signals.fail(message)
    signals.end(exit_code)
