"""CPU-µs a row per stage of one scoring or backfill run: thread CPU inside the job's own steps, the rest is Beam.

    python -m benchmarks.cpu_split score --config configs/local.yaml --date D --customers C --reviews R ...
    python /path/to/benchmarks/cpu_split.py backfill ...   # with PYTHONPATH=OTHER_TREE: that tree's code, split

Each step is timed with time.thread_time() on the thread that runs it (the featurize and model-call threads
included), exclusively: a step called inside another is charged to itself only. Steps that are not in a tree are
skipped, so the same instrument splits an older checkout. Printed on stderr as a table, and as the harness's
result line (`BENCH-RESULT {"split": ...}`) for benchmarks.run. "start-up" is the process CPU before the first
row is read (imports, planning, footers, graph construction); "native threads" the threads Python did not start
(Arrow's reader pools, gRPC), still alive at the end; "Beam and the rest" is what no step accounts for: Beam's
element handling and bundle scheduling on Python threads. Busy share: process CPU over (wall × cores).
"""

# ruff: noqa: E402  (the steps are wrapped after their modules are imported)
from __future__ import annotations

import collections
import functools
import gc
import importlib
import json
import os
import resource
import sys
import threading
import time

if __package__ in (None, ""):  # run as a file from another tree: that tree's code comes first on the path
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The stages the report names, in order; every wrapped step belongs to one.
STAGES = ("start-up", "read", "join", "validate", "featurize", "model", "infer (rest)", "write", "commit")
NATIVE = "native threads"
REST = "Beam and the rest"
_ACC: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
_local = threading.local()
_FIRST = {}


def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _enter(stage: str) -> None:
    if not _FIRST and stage == "read":
        _FIRST["cpu"], _FIRST["native"] = _process_cpu(), _native_thread_cpu()
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    now = time.thread_time()
    if stack:
        _charge(stack[-1][0], now - stack[-1][1])
    stack.append([stage, now])


def _exit() -> None:
    stack = _local.stack
    now = time.thread_time()
    stage, since = stack.pop()
    _charge(stage, now - since)
    if stack:
        stack[-1][1] = now


def _charge(stage: str, seconds: float) -> None:
    with _LOCK:
        _ACC[stage] += seconds


def _find(path: str):
    module, _, attr = path.partition(":")
    try:
        owner = importlib.import_module(module)
    except ImportError:
        return None, None
    names = attr.split(".")
    for name in names[:-1]:
        owner = getattr(owner, name, None)
        if owner is None:
            return None, None
    return (owner, names[-1]) if hasattr(owner, names[-1]) else (None, None)


def wrap(path: str, stage: str) -> bool:
    """Charges the calls of module:Owner.method (or module:function) to stage; False when the tree has none."""
    owner, name = _find(path)
    if owner is None:
        return False
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def inner(*a, **k):
        _enter(stage)
        try:
            return fn(*a, **k)
        finally:
            _exit()

    setattr(owner, name, inner)
    return True


def wrap_generator(path: str, stage: str) -> bool:
    """As wrap, for a generator: only the time inside each next() is charged (not the consumer's)."""
    owner, name = _find(path)
    if owner is None:
        return False
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def inner(*a, **k):
        it = fn(*a, **k)
        while True:
            _enter(stage)
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                _exit()
            yield x

    setattr(owner, name, inner)
    return True


# (path, stage, generator?). Everything a run does per row, by the stage it belongs to; duplicates of a name across
# trees (the join's modules before and after a split) are listed all, and whichever exists is wrapped.
STEPS = (
    ("transforms.io:ReadParquetBatches._read", "read", True),
    ("transforms.broadcast_join:join_customers", "join", False),
    ("transforms.shuffle_join:join_bucket", "join", False),
    ("transforms.shuffle_join:attach_answers", "join", False),
    ("transforms.customer_table:compact_customers", "join", False),
    ("transforms.customer_table:filter_needed", "join", False),
    ("transforms.customer_table:deduplicate", "join", False),
    ("transforms.join:_KeySetFn.add_input", "join", False),
    ("transforms.join:_KeySetFn.compact", "join", False),
    ("transforms.join:_BucketCustomers.process", "join", False),
    ("transforms.validate:check_rows", "validate", False),
    ("transforms.validate:duplicate_row_keys", "validate", False),
    ("transforms.featurize:FeaturizeTables._featurize", "featurize", False),
    ("transforms.inference:score_table", "infer (rest)", False),
    ("model.runtime:ModelRuntime._padded_call", "model", False),
    ("transforms.io:WriteParquetShards.process", "write", False),
    ("transforms.io:WriteParquetShards.finish_bundle", "write", False),
    ("pipeline.publish.commit:CommitPartition.process", "commit", True),
    ("pipeline.publish.commit:WriteRunSummary.process", "commit", True),
)


def install() -> list[str]:
    """Wraps every step this tree has; returns the ones it lacks."""
    missing = []
    for path, stage, generator in STEPS:
        if not (wrap_generator if generator else wrap)(path, stage):
            missing.append(path)
    return missing


def _native_thread_cpu() -> float:
    """CPU of this process's live threads that Python did not start (Arrow's CPU and I/O pools, gRPC's), from
    /proc; threads that already ended are not counted (they fall into the rest)."""
    python = {t.native_id for t in threading.enumerate()}
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in python:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def split(rows: int, wall: float) -> dict:
    """{"rows", "wall_s", "cpu_s", "busy", "us_per_row": {stage: CPU-µs a row}} of this process so far."""
    total = _process_cpu()
    seconds = {"start-up": _FIRST.get("cpu", total)}
    with _LOCK:
        seconds.update({stage: _ACC[stage] for stage in STAGES if stage != "start-up"})
    seconds[NATIVE] = _native_thread_cpu() - _FIRST.get("native", 0.0)
    seconds[REST] = total - sum(seconds.values())
    per_row = {stage: round(s * 1e6 / rows, 3) if rows else None for stage, s in seconds.items()}
    cores = os.cpu_count() or 1
    return {
        "rows": rows,
        "wall_s": round(wall, 2),
        "cpu_s": round(total, 2),
        "busy": round(total / (wall * cores), 3) if wall else None,
        "cpu_s_by_stage": {k: round(v, 3) for k, v in seconds.items()},
        "us_per_row": per_row,
    }


def format_split(result: dict) -> str:
    """The split as a few aligned lines."""
    lines = [
        f"CPU split: {result['rows']:,} rows, wall {result['wall_s']:.2f} s, process CPU {result['cpu_s']:.2f} s, "
        f"cores busy {result['busy'] * 100:.0f} %"
    ]
    for stage, us in result["us_per_row"].items():
        lines.append(f"  {stage:18s} {result['cpu_s_by_stage'][stage]:8.2f} CPU-s {us:8.3f} CPU-µs a row")
    outside = sum(us for stage, us in result["us_per_row"].items() if stage != "model")
    lines.append(f"  {'all but the model':18s} {'':14s} {outside:8.3f} CPU-µs a row")
    return "\n".join(lines)


def _rows_read(output: str) -> int:
    """Rows read, from the job's own `done: ... = N read` lines (one per run; a backfill may print one per chunk)."""
    import re

    return sum(int(m) for m in re.findall(r"= (\d+) read in", output))


class _Tee:
    """stdout/stderr that also keeps what the job printed (for its rows-read line)."""

    def __init__(self, stream):
        self._stream, self.text = stream, []

    def write(self, s):
        self.text.append(s)
        return self._stream.write(s)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    missing = install()
    from pipeline.cli.main import main as cli

    tee_out, tee_err = _Tee(sys.stdout), _Tee(sys.stderr)
    sys.stdout, sys.stderr = tee_out, tee_err
    try:
        code = cli(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout, sys.stderr = tee_out._stream, tee_err._stream
    result = split(_rows_read("".join(tee_out.text + tee_err.text)), time.perf_counter() - started)
    result["not_in_this_tree"] = missing
    if code == 0:  # a failed run has no rows to divide by; its error is above
        print(format_split(result), file=sys.stderr, flush=True)
    print("BENCH-RESULT " + json.dumps({"split": result}), flush=True)
    gc.disable()  # as the CLI's own entry point exits (pipeline/cli/main.py: run)
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
