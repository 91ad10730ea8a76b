"""Failure isolation by bisection, shared by featurizing and scoring: a failing call is halved down to its rows."""

from __future__ import annotations

import numpy as np

# A range of rows whose call fails is halved until the failing rows are found. Two limits keep a failure that is
# not about rows (a broken model, a bug) from costing ~2n calls: when the whole table fails, PROBES single rows
# spread over it are tried first, and if every one of them fails too the table is given up as a partition failure
# (`systemic`); and after MAX_FAILED_CALLS failed calls the rows not yet isolated are rejected together.
PROBES = 8
MIN_ROWS_TO_PROBE = 64
MAX_FAILED_CALLS = 128


class Isolation:
    """What isolate_failures found: the results of the calls that worked, and the rows no call could handle."""

    def __init__(self, n: int):
        self.results: list[tuple[int, int, object]] = []
        self.failed = np.zeros(n, dtype=bool)
        self.first_error: str | None = None
        self.systemic = False
        self.failed_calls = 0

    def note(self, error: Exception) -> None:
        self.failed_calls += 1
        self.first_error = self.first_error or f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def _every_probe_fails(call, n: int, found: Isolation) -> bool:
    for row in np.unique(np.linspace(0, n - 1, PROBES).astype(np.int64)):
        try:
            call(int(row), int(row) + 1)
            return False
        except Exception as e:  # a probe that fails is what this looks for
            found.note(e)
    return True


def isolate_failures(call, n: int, max_failed_calls: int = MAX_FAILED_CALLS) -> Isolation:
    """Calls call(start, stop) over rows [0, n); when a call fails, halves the range until the failing rows are found.

    When the whole table fails and so does every probe row, gives up at once (`systemic`: the failure is not about
    rows); after max_failed_calls failed calls, rejects the rows still pending together.
    """
    found = Isolation(n)
    pending = [(0, n)] if n else []  # a stack: depth first, so the budget isolates some rows rather than none
    while pending:
        start, stop = pending.pop()
        if found.failed_calls >= max_failed_calls:
            found.failed[start:stop] = True
            continue
        try:
            found.results.append((start, stop, call(start, stop)))
        except Exception as e:  # Any failure isolates rows instead of failing the run.
            found.note(e)
            if stop - start == n and n >= MIN_ROWS_TO_PROBE and _every_probe_fails(call, n, found):
                found.systemic = True
                found.failed[:] = True
                return found
            if stop - start == 1:
                found.failed[start] = True
            else:
                middle = (start + stop) // 2
                pending.extend([(middle, stop), (start, middle)])
    return found


def score_with_isolation(predict, numeric: np.ndarray, tokens: np.ndarray, max_failed_calls: int = MAX_FAILED_CALLS):
    """Scores rows, isolating the rows the model fails on (see isolate_failures).

    Returns (scores, failed mask, first error message, systemic); a failed row's score is NaN.
    """
    n = len(numeric)
    scores = np.full(n, np.nan, dtype=np.float32)
    found = isolate_failures(lambda a, b: predict(numeric[a:b], tokens[a:b]), n, max_failed_calls)
    for start, stop, values in found.results:
        scores[start:stop] = values
    return scores, found.failed, found.first_error, found.systemic
