"""Tests for the per-partition report: histogram, PSI, PNG rendering, markdown and the writer contract."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from pipeline.signals.report import (
    HISTOGRAM_BINS,
    population_stability_index,
    render_histogram_png,
    render_report_markdown,
    score_histogram,
    write_report,
)

# Counts shaped like a sentiment score distribution (mass near both ends), and the same mass moved toward the middle.
BASELINE_COUNTS = [120, 60, 40, 30, 25, 20, 18, 16, 15, 14, 14, 15, 16, 18, 20, 25, 30, 40, 60, 394]
SHIFTED_COUNTS = [10, 10, 15, 20, 40, 60, 80, 100, 110, 120, 110, 100, 60, 40, 30, 20, 15, 10, 20, 30]


def make_summary(
    counts: list[int] | None = None,
    date: str | None = "2026-11-28",
    model_version: str = "sha256-abc123",
) -> dict:
    """A summary.json dict like a scoring run writes, with rows matching the histogram."""
    counts = list(BASELINE_COUNTS if counts is None else counts)
    scored = sum(counts)
    return {
        "status": "ok",
        "date": date,
        "model_version": model_version,
        "run_id": "20261129T101500Z-1a2b",
        "output": f"/path/out/dt={date}",
        "rows": {"read": scored + 10, "scored": scored, "rejected": 10},
        "rejected_by_reason": {"missing_customer": 4, "null_text": 6},
        "score_quantiles": {
            "min": 0.0123,
            "p01": 0.02,
            "p05": 0.04,
            "p25": 0.2,
            "p50": 0.6,
            "p75": 0.9,
            "p95": 0.97,
            "p99": 0.99,
            "max": 0.9987,
            "mean": 0.5678,
        },
        "score_histogram": {"edges": score_histogram(np.zeros(0))["edges"], "counts": counts},
        "oov_rate": 0.031,
        "wall_time_seconds": 12.3,
        "rows_per_second": 80.5,
    }


# --- score_histogram


def test_histogram_counts_sum_to_n_and_edges_span_unit_interval():
    scores = np.random.default_rng(0).random(1000)
    histogram = score_histogram(scores)
    assert len(histogram["edges"]) == HISTOGRAM_BINS + 1
    assert len(histogram["counts"]) == HISTOGRAM_BINS
    assert histogram["edges"][0] == 0.0 and histogram["edges"][-1] == 1.0
    assert histogram["edges"][3] == 0.15
    assert np.all(np.diff(histogram["edges"]) > 0)
    assert sum(histogram["counts"]) == 1000
    assert all(isinstance(count, int) for count in histogram["counts"])


def test_histogram_puts_one_in_last_bin_and_zero_in_first():
    histogram = score_histogram(np.array([0.0, 1.0, 1.0], dtype=np.float32))
    assert histogram["counts"][0] == 1
    assert histogram["counts"][-1] == 2
    assert sum(histogram["counts"]) == 3


def test_histogram_bin_boundaries_are_half_open():
    histogram = score_histogram(np.array([0.05, 0.0499]), bins=20)
    assert histogram["counts"][0] == 1 and histogram["counts"][1] == 1


def test_histogram_of_no_scores_is_all_zero():
    histogram = score_histogram(np.array([]))
    assert histogram["counts"] == [0] * HISTOGRAM_BINS
    assert len(histogram["edges"]) == HISTOGRAM_BINS + 1


def test_histogram_accepts_a_column_of_model_outputs_and_custom_bins():
    histogram = score_histogram(np.full((8, 1), 0.3), bins=4)
    assert histogram["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert histogram["counts"] == [0, 8, 0, 0]


@pytest.mark.parametrize("bad", [[0.5, 1.01], [-0.01], [np.nan], [np.inf]])
def test_histogram_rejects_scores_outside_unit_interval(bad):
    with pytest.raises(ValueError):
        score_histogram(np.array(bad))


@pytest.mark.parametrize("bins", [0, -1, 2.5, True])
def test_histogram_rejects_bad_bin_counts(bins):
    with pytest.raises(ValueError):
        score_histogram(np.array([0.5]), bins=bins)


# --- population_stability_index


def test_psi_of_identical_distributions_is_zero():
    assert population_stability_index(BASELINE_COUNTS, BASELINE_COUNTS) == pytest.approx(0.0, abs=1e-12)
    # Same proportions at a different scale are the same distribution.
    doubled = [2 * count for count in BASELINE_COUNTS]
    assert population_stability_index(BASELINE_COUNTS, doubled) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_shifted_distribution_is_above_threshold():
    psi = population_stability_index(BASELINE_COUNTS, SHIFTED_COUNTS)
    assert psi is not None and psi > 0.2


def test_psi_of_small_perturbation_stays_small():
    perturbed = list(BASELINE_COUNTS)
    perturbed[0] += 5
    perturbed[-1] -= 5
    psi = population_stability_index(BASELINE_COUNTS, perturbed)
    assert psi is not None and 0 < psi < 0.01


def test_psi_matches_hand_computation():
    # Proportions (0.5, 0.5) against (0.25, 0.75).
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert population_stability_index([5, 5], [1, 3]) == pytest.approx(expected)


def test_psi_is_symmetric():
    forward = population_stability_index(BASELINE_COUNTS, SHIFTED_COUNTS)
    backward = population_stability_index(SHIFTED_COUNTS, BASELINE_COUNTS)
    assert forward == pytest.approx(backward)


def test_psi_with_an_empty_bin_is_finite():
    psi = population_stability_index([10, 0, 10], [10, 10, 0])
    assert psi is not None and math.isfinite(psi) and psi > 0.2


@pytest.mark.parametrize("expected, actual", [([0, 0, 0], [1, 2, 3]), ([1, 2, 3], [0, 0, 0]), ([], [])])
def test_psi_is_none_when_a_side_has_no_rows(expected, actual):
    assert population_stability_index(expected, actual) is None


def test_psi_rejects_different_bin_counts():
    with pytest.raises(ValueError, match="different numbers of bins"):
        population_stability_index([1, 2, 3], [1, 2])


def test_psi_rejects_negative_counts():
    with pytest.raises(ValueError):
        population_stability_index([1, -2, 3], [1, 2, 3])


# --- render_histogram_png


def test_png_is_an_image_of_a_readable_size():
    # Ours: a PNG of a useful size, its title with a "$" kept literal. Whether matplotlib writes valid PNG is its
    # own tests' business; the width and height are read from the IHDR chunk, which follows the 8-byte signature.
    png = render_histogram_png(score_histogram(np.linspace(0, 1, 200)), "Score distribution, 2026-11-28 ($5 test)")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100


def test_png_rendering_leaves_no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_histogram_png(score_histogram(np.array([])), "empty")
    assert plt.get_fignums() == before


def test_png_rejects_mismatched_histogram():
    with pytest.raises(ValueError):
        render_histogram_png({"edges": [0.0, 1.0], "counts": [1, 2]}, "bad")


# --- render_report_markdown


def test_markdown_contains_the_summary_numbers():
    summary = make_summary()
    scored = sum(BASELINE_COUNTS)
    markdown, psi, flagged = render_report_markdown(summary, None)
    assert "2026-11-28" in markdown
    assert "sha256-abc123" in markdown
    assert "20261129T101500Z-1a2b" in markdown
    assert f"| read | {scored + 10} |" in markdown
    assert f"| scored | {scored} |" in markdown
    assert "| rejected | 10 |" in markdown
    assert "Invariant holds (scored + rejected == read): yes" in markdown
    assert "| missing_customer | 4 |" in markdown
    assert "| null_text | 6 |" in markdown
    assert markdown.index("null_text") < markdown.index("missing_customer")  # by count descending, not by name
    assert "| p50 | 0.6000 |" in markdown
    assert "| min | 0.0123 |" in markdown
    assert "| mean | 0.5678 |" in markdown
    assert "OOV rate: 3.10%" in markdown
    assert "![Score histogram](score_histogram.png)" in markdown
    assert "Wall time: 12.3 s" in markdown
    assert "Rows per second: 80.5" in markdown
    assert markdown.index("Drift against previous partition") < markdown.index("Wall time")
    assert psi is None and flagged is False


def test_markdown_without_previous_says_so():
    markdown, psi, flagged = render_report_markdown(make_summary(), None)
    assert "no previous partition to compare" in markdown
    assert "DRIFT" not in markdown
    assert psi is None and not flagged


def test_markdown_flags_drift_above_threshold():
    summary = make_summary(SHIFTED_COUNTS)
    previous = make_summary(BASELINE_COUNTS, date="2026-11-27")
    expected_psi = population_stability_index(BASELINE_COUNTS, SHIFTED_COUNTS)
    markdown, psi, flagged = render_report_markdown(summary, previous, psi_threshold=0.2)
    assert psi == pytest.approx(expected_psi)
    assert flagged is True
    assert "Previous partition: 2026-11-27" in markdown
    assert f"PSI: {expected_psi:.3f}" in markdown
    assert f"**DRIFT: PSI {expected_psi:.3f} above threshold 0.20**" in markdown
    assert "within threshold" not in markdown
    assert "Model version changed" not in markdown


def test_markdown_does_not_flag_drift_below_threshold():
    # The failure twin of the test above: same shift, but a threshold it does not exceed.
    summary = make_summary(SHIFTED_COUNTS)
    previous = make_summary(BASELINE_COUNTS, date="2026-11-27")
    expected_psi = population_stability_index(BASELINE_COUNTS, SHIFTED_COUNTS)
    markdown, psi, flagged = render_report_markdown(summary, previous, psi_threshold=expected_psi + 1.0)
    assert psi == pytest.approx(expected_psi)
    assert flagged is False
    assert "DRIFT" not in markdown
    assert "within threshold" in markdown
    assert f"PSI: {expected_psi:.3f}" in markdown


def test_markdown_for_unchanged_distribution_is_within_threshold():
    markdown, psi, flagged = render_report_markdown(make_summary(), make_summary(date="2026-11-27"))
    assert psi == pytest.approx(0.0, abs=1e-12)
    assert "PSI: 0.000" in markdown
    assert not flagged and "DRIFT" not in markdown


def test_markdown_notes_a_model_version_change():
    previous = make_summary(date="2026-11-27", model_version="sha256-old999")
    markdown, _, _ = render_report_markdown(make_summary(), previous)
    assert "Model version changed" in markdown
    assert "sha256-old999" in markdown


def test_markdown_for_unpartitioned_run_without_rejects():
    summary = make_summary(date=None)
    summary["rows"] = {"read": 5, "scored": 5, "rejected": 0}
    summary["rejected_by_reason"] = {}
    markdown, _, _ = render_report_markdown(summary, make_summary(date=None))
    assert "unpartitioned run" in markdown
    rejects_section = markdown.split("## Rejects by reason", 1)[1].split("##", 1)[0]
    assert rejects_section.strip() == "none"


def test_markdown_reports_a_broken_invariant():
    summary = make_summary()
    summary["rows"] = {"read": 100, "scored": 90, "rejected": 5}
    markdown, _, _ = render_report_markdown(summary, None)
    assert "Invariant holds (scored + rejected == read): **NO**" in markdown


def test_markdown_does_not_compare_histograms_with_different_bins():
    previous = make_summary(date="2026-11-27")
    previous["score_histogram"] = score_histogram(np.array([0.5]), bins=10)
    markdown, psi, flagged = render_report_markdown(make_summary(), previous)
    assert psi is None and not flagged
    assert "different bin edges" in markdown


def test_markdown_when_previous_had_no_scored_rows():
    previous = make_summary([0] * HISTOGRAM_BINS, date="2026-11-27")
    markdown, psi, flagged = render_report_markdown(make_summary(), previous)
    assert psi is None and not flagged
    assert "no scored rows" in markdown


# --- write_report


def test_write_report_writes_png_and_markdown_through_the_writer():
    written: dict[str, bytes] = {}

    def writer(file_name: str, data: bytes) -> None:
        written[file_name] = data

    result = write_report(writer, make_summary(SHIFTED_COUNTS), make_summary(date="2026-11-27"))
    assert list(written) == ["score_histogram.png", "report.md"]
    assert written["score_histogram.png"].startswith(b"\x89PNG")
    markdown = written["report.md"].decode("utf-8")
    assert "![Score histogram](score_histogram.png)" in markdown
    assert result["drift_flagged"] is True
    assert result["psi"] == pytest.approx(population_stability_index(BASELINE_COUNTS, SHIFTED_COUNTS))
    assert f"**DRIFT: PSI {result['psi']:.3f} above threshold 0.20**" in markdown
