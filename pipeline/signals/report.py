"""Per-partition run report: score histogram PNG, drift (PSI) against the previous partition, and report.md."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np

HISTOGRAM_BINS = 20
HISTOGRAM_FILE = "score_histogram.png"
REPORT_FILE = "report.md"

# The order quantiles are listed in; keys a summary adds beyond these follow in their own order.
_QUANTILE_ORDER = ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max", "mean")


def score_histogram(scores: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict:
    """Counts of scores in `bins` equal-width bins over [0, 1], as stored in summary.json.

    Fixed edges (rather than data-driven ones) make histograms of different partitions comparable bin by bin, which
    the PSI needs. Bins are half-open [lo, hi) except the last, which is closed so a score of exactly 1.0 is counted.
    A score outside [0, 1] or not finite raises ValueError instead of being silently dropped: the counts must add up
    to the number of scored rows, and such a score means the model output is broken.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError("scores contain NaN or infinite values")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"scores must lie in [0, 1], got range [{values.min()}, {values.max()}]")
    # Rounded so stored edges read cleanly (0.15, not 0.15000000000000002); the rounded edges are the ones binned on.
    edges = [round(float(edge), 12) for edge in np.linspace(0.0, 1.0, int(bins) + 1)]
    counts, _ = np.histogram(values, bins=np.asarray(edges))
    return {"edges": edges, "counts": [int(count) for count in counts]}


def population_stability_index(
    expected_counts: Sequence[int], actual_counts: Sequence[int], epsilon: float = 1e-4
) -> float | None:
    """PSI = sum((a - e) * ln(a / e)) over bin proportions: how far the actual distribution moved from the expected.

    Proportions are floored at `epsilon` so a bin that is empty on one side contributes a large but finite term.
    Returns None when either side has no rows (there is no distribution to compare). Raises ValueError when the two
    histograms have a different number of bins or a negative count. Common reading: < 0.1 stable, 0.1-0.2 some shift,
    > 0.2 a significant shift.
    """
    expected = np.asarray(expected_counts, dtype=np.float64).ravel()
    actual = np.asarray(actual_counts, dtype=np.float64).ravel()
    if expected.shape != actual.shape:
        raise ValueError(f"histograms have different numbers of bins: {expected.size} and {actual.size}")
    if np.any(expected < 0) or np.any(actual < 0):
        raise ValueError("histogram counts must not be negative")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    expected_total = expected.sum()
    actual_total = actual.sum()
    if expected_total == 0 or actual_total == 0:
        return None
    e = np.maximum(expected / expected_total, epsilon)
    a = np.maximum(actual / actual_total, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def render_histogram_png(histogram: dict, title: str) -> bytes:
    """The histogram as a bar chart in PNG bytes, for embedding in report.md.

    Uses a bare Figure with an Agg canvas instead of pyplot, so it needs no display and leaves no figure registered in
    pyplot's global state (safe to call many times in a long-lived worker).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = np.asarray(histogram["edges"], dtype=np.float64)
    counts = np.asarray(histogram["counts"], dtype=np.float64)
    if edges.size != counts.size + 1:
        raise ValueError(f"a histogram needs one more edge than counts, got {edges.size} edges, {counts.size} counts")

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black", linewidth=0.5)
    axes.set_xlim(float(edges[0]), float(edges[-1]))
    axes.set_xlabel("score")
    axes.set_ylabel("rows")
    # A title is plain text: escape "$" so matplotlib does not read it as mathtext.
    axes.set_title(title.replace("$", r"\$"))
    figure.tight_layout()
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def render_report_markdown(
    summary: dict,
    previous: dict | None,
    psi_threshold: float = 0.2,
    histogram_file: str = HISTOGRAM_FILE,
) -> tuple[str, float | None, bool]:
    """The partition's report.md text, the PSI against `previous` (None if not computable), and the drift flag.

    `summary` and `previous` are summary.json dicts of this partition and of the partition before it. Drift is flagged
    only when a PSI could be computed and it is strictly above `psi_threshold`.
    """
    date = summary.get("date")
    rows = summary.get("rows") or {}
    read, scored, rejected = rows.get("read"), rows.get("scored"), rows.get("rejected")

    lines = [f"# Review sentiment scoring report: {date or 'unpartitioned run'}", ""]
    lines.append(f"- Model version: `{summary.get('model_version')}`")
    lines.append(f"- Run id: `{summary.get('run_id')}`")
    if summary.get("status") is not None:
        lines.append(f"- Status: {summary['status']}")
    if summary.get("output"):
        lines.append(f"- Output: `{summary['output']}`")
    lines.append("")

    lines += ["## Rows", "", "| rows | count |", "| --- | ---: |"]
    lines += [f"| read | {read} |", f"| scored | {scored} |", f"| rejected | {rejected} |", ""]
    if all(isinstance(n, int) for n in (read, scored, rejected)):
        holds = scored + rejected == read
        verdict = "yes" if holds else f"**NO** ({scored} + {rejected} = {scored + rejected}, read {read})"
        lines.append(f"Invariant holds (scored + rejected == read): {verdict}")
    else:
        lines.append("Invariant holds (scored + rejected == read): unknown, row counts missing")
    lines.append("")

    lines += ["## Rejects by reason", ""]
    reasons = {reason: count for reason, count in (summary.get("rejected_by_reason") or {}).items() if count}
    if reasons:
        lines += ["| reason | rows |", "| --- | ---: |"]
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"| {_cell(reason)} | {count} |")
    else:
        lines.append("none")
    lines.append("")

    lines += ["## Scores", ""]
    quantiles = summary.get("score_quantiles") or {}
    if quantiles:
        lines += ["| statistic | score |", "| --- | ---: |"]
        ordered = [key for key in _QUANTILE_ORDER if key in quantiles]
        ordered += [key for key in quantiles if key not in _QUANTILE_ORDER]
        lines += [f"| {_cell(key)} | {_number(quantiles[key], 4)} |" for key in ordered]
    else:
        lines.append("No score quantiles (no scored rows).")
    lines.append("")
    oov_rate = summary.get("oov_rate")
    oov_text = "n/a" if oov_rate is None else f"{oov_rate * 100:.2f}%"
    lines += [f"OOV rate: {oov_text}", "", f"![Score histogram]({histogram_file})", ""]

    psi, flagged, drift_lines = _drift_section(summary, previous, psi_threshold)
    lines += ["## Drift against previous partition", ""]
    for drift_line in drift_lines:  # one paragraph each, or Markdown would run them together
        lines += [drift_line, ""]

    lines += ["## Timing", ""]
    lines.append(f"- Wall time: {_number(summary.get('wall_time_seconds'), 1)} s")
    lines.append(f"- Rows per second: {_number(summary.get('rows_per_second'), 1)}")
    return "\n".join(lines) + "\n", psi, flagged


def write_report(
    directory_writer: Callable[[str, bytes], None],
    summary: dict,
    previous: dict | None,
    psi_threshold: float = 0.2,
) -> dict:
    """Writes score_histogram.png and report.md through `directory_writer`; returns {"psi", "drift_flagged"}.

    The writer is the caller's, so the partition directory may be local or remote (gs://). The image is written first
    so the report never links to a file that is not there yet.
    """
    title = f"Score distribution, {summary.get('date') or 'unpartitioned run'}"
    histogram = summary.get("score_histogram") or score_histogram(np.zeros(0))
    directory_writer(HISTOGRAM_FILE, render_histogram_png(histogram, title))
    markdown, psi, flagged = render_report_markdown(summary, previous, psi_threshold, HISTOGRAM_FILE)
    directory_writer(REPORT_FILE, markdown.encode("utf-8"))
    return {"psi": psi, "drift_flagged": flagged}


def _drift_section(summary: dict, previous: dict | None, psi_threshold: float) -> tuple[float | None, bool, list[str]]:
    """PSI, drift flag and the report lines comparing this partition's score histogram with the previous one's."""
    if previous is None:
        return None, False, ["PSI: not computed, no previous partition to compare."]
    lines = [f"Previous partition: {previous.get('date') or 'unpartitioned run'}"]
    current_model, previous_model = summary.get("model_version"), previous.get("model_version")
    if previous_model != current_model:
        lines.append(
            f"Model version changed: the previous partition was scored with `{previous_model}`, this one with "
            f"`{current_model}`, so a shift may come from the model rather than the data."
        )
    current_histogram = summary.get("score_histogram") or {}
    previous_histogram = previous.get("score_histogram") or {}
    if not current_histogram or not previous_histogram:
        lines.append("PSI: not computed, a score histogram is missing.")
        return None, False, lines
    if not _same_edges(current_histogram.get("edges", []), previous_histogram.get("edges", [])):
        # Counts over different bins are not comparable; a nightly report should say so rather than fail the run.
        lines.append("PSI: not computed, the two histograms use different bin edges.")
        return None, False, lines
    psi = population_stability_index(previous_histogram["counts"], current_histogram["counts"])
    if psi is None:
        lines.append("PSI: not computed, one of the partitions has no scored rows.")
        return None, False, lines
    lines.append(f"PSI: {psi:.3f}")
    flagged = psi > psi_threshold
    if flagged:
        lines.append(f"**DRIFT: PSI {psi:.3f} above threshold {psi_threshold:.2f}**")
    else:
        lines.append(f"PSI within threshold {psi_threshold:.2f}.")
    return psi, flagged, lines


def _same_edges(first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether two histograms bin on the same edges (up to float noise from a JSON round trip)."""
    first_edges = np.asarray(first, dtype=np.float64)
    second_edges = np.asarray(second, dtype=np.float64)
    return first_edges.shape == second_edges.shape and bool(np.allclose(first_edges, second_edges, rtol=0, atol=1e-9))


def _number(value: object, decimals: int) -> str:
    """A number with fixed decimals; "n/a" for a missing or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{decimals}f}"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", r"\|").replace("\n", " ")
