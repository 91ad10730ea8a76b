"""CPU split of one scoring run: thread CPU time inside the pipeline's own steps; the rest is Beam and start-up.

python benchmarks/cpu_split.py score --config configs/local.yaml --date D --customers C --reviews R ...
"""

# ruff: noqa: E402  (the steps are wrapped after their modules are imported)
import collections
import functools
import resource
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
ACC = collections.Counter()
WALL = collections.Counter()
_local = threading.local()


def wrap(owner, name, label):
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def inner(*a, **k):
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _local.depth = depth
            if depth == 0:
                ACC[label] += time.thread_time() - t0
                WALL[label] += time.perf_counter() - w0

    setattr(owner, name, inner)


def wrap_gen(owner, name, label):
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def inner(*a, **k):
        it = fn(*a, **k)
        while True:
            t0 = time.thread_time()
            try:
                x = next(it)
            except StopIteration:
                ACC[label] += time.thread_time() - t0
                return
            ACC[label] += time.thread_time() - t0
            yield x

    setattr(owner, name, inner)


T0 = time.perf_counter()
import model.runtime as rt
import transforms.broadcast_join as bj
import transforms.customer_table as ct
import transforms.featurize as fe
import transforms.io as io
import transforms.join as jn
import transforms.validate as va

wrap_gen(io.ReadParquetBatches, "_batches", "read parquet")
wrap(io.WriteParquetShards, "process", "write shards")
wrap(io.WriteParquetShards, "finish_bundle", "write shards")
wrap(bj, "join_customers", "join (probe)")
wrap(va, "check_rows", "validate")
wrap(va, "duplicate_row_keys", "duplicates")
wrap(fe.Featurizer, "featurize", "featurize (tokenize+scale)")
wrap(rt.ModelRuntime, "_padded_call", "model calls")
wrap(ct, "compact_customers", "customer table")
wrap(ct, "filter_needed", "customer table")
wrap(ct, "deduplicate", "customer table")
wrap(jn._KeySetFn, "add_input", "needed keys")
wrap(jn._KeySetFn, "compact", "needed keys")


def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    print(f"\nCPU split: wall {time.perf_counter() - T0:.2f}s, process CPU {total:.2f}s", file=sys.stderr)
    for k, v in ACC.most_common():
        print(f"  {k:28s} {v:6.2f} CPU-s  ({WALL[k]:6.2f} s wall in calls)", file=sys.stderr)
    print(f"  {'rest (Beam, start-up, ...)':28s} {total - sum(ACC.values()):6.2f} CPU-s", file=sys.stderr)


from pipeline.cli.main import main

try:
    main(sys.argv[1:])
except SystemExit:
    pass
report()
