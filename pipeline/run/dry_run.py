"""`--dry-run`: the plan of a score or backfill, from the same start-up checks as the run, without running it.

Each day with its input files and rows (from the Parquet footers), whether it would be scored, skipped (already
published by this model version, or no input) or refused and why, the publisher and where it would write, and the
backfill's chunks. It writes nothing and takes no lease: exit 0 when the run would be allowed, 2 when refused.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from model.bundle import BundleError
from pipeline.errors import ConfigError, ExitCode, OutputError
from pipeline.run.config import ScoreConfig
from pipeline.run.options import pipeline_options
from pipeline.run.plan import RunPlan, inspect_run
from pipeline.run.progress import chunk_label, chunks
from transforms.schema import InputError

SCORE, SKIP, REFUSE = "score", "skip", "refuse"
# Input files listed per day; more are counted.
FILES_SHOWN = 5


@dataclass(frozen=True)
class PlannedDay:
    """What the run would do with one partition ("" for an unpartitioned output)."""

    partition: str
    action: str  # SCORE, SKIP or REFUSE
    why: str
    files: tuple[tuple[str, int], ...] = ()  # (path, rows from its footer)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.files)


@dataclass(frozen=True)
class DryRun:
    """The plan a run would follow: its days in order and the chunks the scored ones run in."""

    plan: RunPlan
    days: list[PlannedDay]
    chunks: list[list[str]]
    runner: str

    def count(self, action: str) -> int:
        return sum(1 for d in self.days if d.action == action)


def plan_dry_run(config: ScoreConfig, dates: list[str] | None, runner: str, backfill: bool = False) -> DryRun:
    """The run's plan from the read-only start-up checks; raises what the run would stop at start-up with."""
    plan = inspect_run(config, dates, backfill)
    files: dict[str, list[tuple[str, int]]] = {}
    for f in plan.review_files:
        files.setdefault(f.partition, []).append((f.path, f.num_rows))
    days = []
    for partition in dates if dates is not None else [""]:
        if partition in plan.failed:
            days.append(PlannedDay(partition, REFUSE, plan.failed[partition]))
        elif partition in plan.skipped:
            days.append(PlannedDay(partition, SKIP, plan.skipped[partition]))
        else:
            why = "no review files: written empty (--allow-empty)" if not files.get(partition) else ""
            days.append(PlannedDay(partition, SCORE, why, tuple(files.get(partition, []))))
    size = config.backfill_chunk_days if backfill else max(len(plan.partitions), 1)
    scored = [d.partition for d in days if d.action == SCORE]
    return DryRun(plan, days, chunks(scored, size) if scored else [], runner)


def render(dry: DryRun, config: ScoreConfig, backfill: bool) -> list[str]:
    """The plan as a person checks it at a glance: one line per day, its files below it, then chunks and totals."""
    plan = dry.plan
    dated = [d.partition for d in dry.days if d.partition]
    what = (
        f"backfill {dated[0]} .. {dated[-1]} ({len(dated)} day(s))"
        if backfill
        else "score " + (f"dt={dated[0]}" if dated else "(unpartitioned)")
    )
    lines = [
        f"dry run: {what}, runner {dry.runner}, model {plan.model_version} ({plan.model_dir})",
        f"customers: {len(plan.customer_files)} file(s), {sum(f.num_rows for f in plan.customer_files)} rows "
        f"({config.customers})",
        f"publisher: {plan.publisher.describe()}",
    ]
    width = max((len(d.partition) for d in dry.days), default=0) + 3
    for day in dry.days:
        label = f"dt={day.partition}" if day.partition else "(all)"
        if day.action == SCORE:
            where = plan.publisher.name(day.partition)
            note = f"; {day.why}" if day.why else ""
            lines.append(f"  {label:<{width}} {SCORE:<6} {day.rows} rows in {len(day.files)} file(s) -> {where}{note}")
            for path, rows in day.files[:FILES_SHOWN]:
                lines.append(f"  {'':<{width}}        {path} ({rows} rows)")
            if len(day.files) > FILES_SHOWN:
                lines.append(f"  {'':<{width}}        ... and {len(day.files) - FILES_SHOWN} more file(s)")
        else:
            lines.append(f"  {label:<{width}} {day.action:<6} {day.why}")
    for i, chunk in enumerate(dry.chunks):
        rows = sum(plan.rows_by_partition.get(p, 0) for p in chunk)
        lines.append(f"{chunk_label(i, len(dry.chunks), chunk)} ({len(chunk)} day(s), {rows} rows)")
    lines.append(
        f"would score {dry.count(SCORE)} partition(s), {sum(d.rows for d in dry.days if d.action == SCORE)} rows; "
        f"skip {dry.count(SKIP)}; refuse {dry.count(REFUSE)}. Nothing was written and no lease was taken."
    )
    return lines


def run_dry(config: ScoreConfig, dates: list[str] | None, beam_flags: list[str], backfill: bool = False) -> int:
    """Prints the plan (stdout) and returns 0 when the run would go ahead, or prints why not and returns 2."""
    try:
        options = pipeline_options(config, beam_flags)
        FileSystems.set_options(options)  # the start-up checks read with the run's credentials and endpoints
        runner = options.view_as(StandardOptions).runner or "DirectRunner"
        dry = plan_dry_run(config, dates, runner, backfill)
    except (ConfigError, BundleError, InputError, OutputError) as e:
        print(f"dry run: refused at start-up: {e}", file=sys.stderr)
        print("dry run: the run would be refused (exit 2); nothing was written and no lease was taken")
        return ExitCode.USAGE
    for line in render(dry, config, backfill):
        print(line)
    return ExitCode.OK
