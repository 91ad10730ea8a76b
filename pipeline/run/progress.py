"""A backfill's chunks and its progress: which chunk of how many, rows done of rows planned, the time left."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from apache_beam.metrics.metric import MetricsFilter

_LOG = logging.getLogger("sentiment-score")


def chunks(partitions: list[str], size: int) -> list[list[str]]:
    """The partitions in runs of `size` days (one pipeline each); one empty chunk when there are none."""
    return [partitions[i : i + size] for i in range(0, len(partitions), size)] or [[]]


def chunk_label(index: int, total: int, chunk: list[str]) -> str:
    """`chunk 2 of 5: D1 .. D2`, the words the dry run and the run's progress lines share."""
    span = f"{chunk[0]} .. {chunk[-1]}" if chunk else "no days"
    return f"chunk {index + 1} of {total}: {span}"


class BackfillProgress:
    """Logs each chunk as it starts, and after it the rows done of those planned and an estimate of the time left
    (the rows still to do at the rate of the chunks done so far)."""

    def __init__(self, all_chunks: list[list[str]], rows: dict[str, int], clock: Callable[[], float] = time.time):
        self.chunks = all_chunks
        self.rows = rows
        self.planned = sum(rows.get(p, 0) for chunk in all_chunks for p in chunk)
        self.done = 0
        self.clock = clock
        self.started = clock()

    def starting(self, index: int) -> None:
        chunk = self.chunks[index]
        rows = sum(self.rows.get(p, 0) for p in chunk)
        _LOG.info("%s (%d day(s), %d rows)", chunk_label(index, len(self.chunks), chunk), len(chunk), rows)

    def finished(self, index: int) -> str:
        """Counts the chunk's rows as done and logs (and returns) the progress line."""
        self.done += sum(self.rows.get(p, 0) for p in self.chunks[index])
        elapsed = self.clock() - self.started
        left = self.planned - self.done
        if left <= 0:
            eta = "nothing left"
        elif self.done <= 0 or elapsed <= 0:
            eta = "time left unknown"
        else:
            eta = f"about {_duration(left * elapsed / self.done)} left"
        percent = 100.0 * self.done / self.planned if self.planned else 100.0
        line = (
            f"backfill progress: {index + 1} of {len(self.chunks)} chunk(s) done, {self.done} of {self.planned} rows "
            f"({percent:.0f}%) in {_duration(elapsed)}, {eta}"
        )
        _LOG.info(line)
        return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def report_progress(result, stop: threading.Event, total: int, started: float, every: float = 30.0) -> None:
    """Logs rows scored so far from Beam's metrics while a non-blocking runner (Dataflow, portable) runs."""
    while not stop.wait(every):
        try:
            counters = result.metrics().query(MetricsFilter().with_name("rows_scored"))["counters"]
            scored = sum((c.committed or c.attempted or 0) for c in counters)
        except Exception:  # Not every runner reports metrics while running; progress is best effort.
            continue
        elapsed = time.time() - started
        _LOG.info(
            "progress: %d of %d rows scored (%.0f%%), %.0f rows/s",
            scored,
            total,
            100.0 * scored / max(total, 1),
            scored / max(elapsed, 1e-9),
        )
