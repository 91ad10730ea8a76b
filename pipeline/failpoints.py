"""Fault injection by name, as etcd's gofail and TiKV's fail-rs do it: points declared here, off unless a test arms one.

Production code calls ``hit("name")`` where a process could die or be overtaken, and knows nothing else about tests.
A test arms a point in its own process (``with armed("parquet.manifest", "raise"): ...``) or, for a process it
starts, through the environment, which Beam's worker processes inherit and read when they import this module::

    SENTIMENT_SCORE_FAILPOINTS="iceberg.rejects-committed=1*sigstop,parquet.moved=raise"

An action is ``raise`` (FailpointHit), ``sigstop`` (the process stops itself, so a test that waits for the stop
with waitpid(WUNTRACED) can kill, signal or race it at a known point and resume it with SIGCONT) or, in-process, a
callable given the point's name; ``N*`` before it (``times=N``) fires it on the first N hits only. An unknown name is
an error wherever it is given, so a typo fails instead of testing nothing. Nothing armed, ``hit`` is one dict lookup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

ENV = "SENTIMENT_SCORE_FAILPOINTS"

# Each point and where it is; the publish steps in the order a publish reaches them.
POINTS: dict[str, str] = {
    "score.shard-written": "a worker wrote and closed a score shard in staging; it goes on to the commit next "
    "(pipeline/run/graph.py adds the step only when this point is armed)",
    "parquet.moved": "a Parquet publish moved its staged shards into the partition folder",
    "parquet.reports": "... and wrote the run's reports beside them",
    "parquet.manifest": "... and wrote `_SUCCESS`: the partition is published",
    "parquet.cleaned": "... and removed what no manifest lists",
    "iceberg.moved": "an Iceberg publish moved its staged shards into both tables' data folders",
    "iceberg.rejects-planned": "... planned the rejects table's commit on the loaded table (once per attempt)",
    "iceberg.rejects-committed": "... committed the rejects table's day",
    "iceberg.scores-planned": "... planned the scores table's commit on the loaded table (once per attempt)",
    "iceberg.scores-committed": "... committed the scores table's day: the day is published",
    "iceberg.cleaned": "... removed the day's files no snapshot references",
}
PARQUET_PUBLISH = ("parquet.moved", "parquet.reports", "parquet.manifest", "parquet.cleaned")
ICEBERG_PUBLISH = (
    "iceberg.moved",
    "iceberg.rejects-planned",
    "iceberg.rejects-committed",
    "iceberg.scores-planned",
    "iceberg.scores-committed",
    "iceberg.cleaned",
)
ACTIONS = ("raise", "sigstop")


class FailpointError(ValueError):
    """An unknown point or action, or an environment value that cannot be read; the message names it."""


class FailpointHit(Exception):
    """What the `raise` action raises: the process failed at this point."""


@dataclass
class _Armed:
    action: str | Callable[[str], None]
    times: int | None  # hits left to fire on; None: every hit


_armed: dict[str, _Armed | None] = dict.fromkeys(POINTS)
_lock = threading.Lock()  # taken only when a point is armed: counts hits across a worker's threads


def hit(name: str) -> None:
    """The point `name` is reached: runs its action when armed, else nothing."""
    try:
        point = _armed[name]
    except KeyError:
        raise _unknown(name) from None
    if point is not None:
        _fire(name, point)


def through(element, name: str):
    """hit(name), then the element unchanged: a Beam Map step placed at a point (`beam.Map(through, name)`)."""
    hit(name)
    return element


def is_armed(name: str) -> bool:
    """Whether a test armed the point in this process (directly or through the environment)."""
    _check(name)
    return _armed[name] is not None


@contextlib.contextmanager
def armed(names: str | Iterable[str], action: str | Callable[[str], None], times: int | None = None) -> Iterator[None]:
    """Arms the point(s) in this process for the block (each with its own count), then restores what was there."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        _check(name)
    if not callable(action) and action not in ACTIONS:
        raise FailpointError(f"failpoint action {action!r}: expected one of {', '.join(ACTIONS)} or a callable")
    if times is not None and times < 1:
        raise FailpointError(f"failpoint times {times}: expected a positive count")
    previous = {name: _armed[name] for name in names}
    _armed.update({name: _Armed(action, times) for name in names})
    try:
        yield
    finally:
        _armed.update(previous)


def parse(value: str) -> dict[str, _Armed]:
    """The points an environment value arms: `name=[N*]action` joined by commas (ENV's syntax)."""
    points = {}
    for term in filter(None, (t.strip() for t in value.split(","))):
        name, equals, action = (part.strip() for part in term.partition("="))
        count, star, action = (part.strip() for part in action.rpartition("*"))
        if not equals or name in points or action not in ACTIONS or (star and not count.isdigit()):
            raise FailpointError(
                f"{ENV}={value!r}: cannot read {term!r} (expected NAME=ACTION or NAME=N*ACTION, "
                f"ACTION one of {', '.join(ACTIONS)}, each name once)"
            )
        if name not in POINTS:
            raise FailpointError(f"{ENV}={value!r}: no failpoint {name!r}")
        times = int(count) if star else None
        if times == 0:
            raise FailpointError(f"{ENV}={value!r}: {term!r} never fires (a count of 0)")
        points[name] = _Armed(action, times)
    return points


def _check(name: str) -> None:
    if name not in _armed:
        raise _unknown(name)


def _unknown(name: str) -> FailpointError:
    return FailpointError(f"no failpoint {name!r}: the points are declared in pipeline/failpoints.py")


def _fire(name: str, point: _Armed) -> None:
    with _lock:
        if point.times is not None:
            if point.times == 0:
                return
            point.times -= 1
    if point.action == "raise":
        raise FailpointHit(name)
    if point.action == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif callable(point.action):
        point.action(name)


_armed.update(parse(os.environ.get(ENV, "")))
