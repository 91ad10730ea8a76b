"""What a run says about the days it skips: one line per kind, the already published apart from those with no input."""

from __future__ import annotations

import logging

from pipeline.run.plan import ALREADY_PUBLISHED, NO_INPUT, RunPlan

_LOG = logging.getLogger("sentiment-score")


def _days(days: list[str], limit: int = 6) -> str:
    if len(days) <= limit:
        return ", ".join(days)
    return f"{', '.join(days[: limit - 1])}, ... {days[-1]}"


def skipped_lines(plan: RunPlan, dates: list[str]) -> list[tuple[int, str]]:
    """(log level, line) for each kind of skipped day. Skipping what this model version published is the normal
    case of a rerun (INFO); a day with no input is worth a look (WARNING)."""
    lines = []
    published = plan.skipped_as(ALREADY_PUBLISHED)
    if published:
        lines.append(
            (
                logging.INFO,
                f"{len(published)} of {len(dates)} day(s) already published by model {plan.model_version}, "
                f"skipped (--skip-existing): {_days(published)}",
            )
        )
    empty = plan.skipped_as(NO_INPUT)
    if empty:
        lines.append(
            (
                logging.WARNING,
                f"{len(empty)} of {len(dates)} day(s) have no review files (no input), skipped: {_days(empty)}",
            )
        )
    return lines


def log_skipped(plan: RunPlan, dates: list[str]) -> None:
    for level, line in skipped_lines(plan, dates):
        _LOG.log(level, line)


def skipped_summary(plan: RunPlan, dates: list[str]) -> str:
    """The one line a run with nothing to score ends with: how many days of each kind."""
    published, empty = plan.skipped_as(ALREADY_PUBLISHED), plan.skipped_as(NO_INPUT)
    parts = []
    if published:
        parts.append(f"{len(published)} of {len(dates)} day(s) already published by model {plan.model_version}")
    if empty:
        parts.append(f"{len(empty)} with no input")
    return "; ".join(parts) or f"every day was skipped ({len(plan.skipped)})"
