"""Micro-benchmark of the join kernels (issue 19): np.unique vs sorted_unique, searchsorted vs is_in_sorted vs
pyarrow is_in, sorts for de-duplication. `python -m benchmarks.join_kernels`; numbers in benchmarks/README.md."""

import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from transforms.customer_table import is_in_sorted  # noqa: E402
from transforms.row_keys import sorted_unique  # noqa: E402

rng = np.random.default_rng(0)
allk = rng.integers(-(2**63), 2**63 - 1, 5_000_000, dtype=np.int64)
rk = allk[rng.integers(0, 5_000_000, 1_000_000)]


def t(label, f, n=3):
    best = 1e9
    for _ in range(n):
        t0 = time.perf_counter()
        r = f()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:40s} {best * 1000:8.1f} ms")
    return r


u1 = t("np.unique 1M", lambda: np.unique(rk))
u2 = t("np.sort(pc.unique) 1M", lambda: np.sort(pc.unique(pa.array(rk)).to_numpy()))
u3 = t("sorted_unique 1M", lambda: sorted_unique(rk))
assert (u1 == u2).all() and (u1 == u3).all()
needed = u1
keys = allk


def ss():
    at = np.searchsorted(needed, keys).clip(0, len(needed) - 1)
    return needed[at] == keys


w1 = t("searchsorted 5M in 850k", ss)
w2 = t("np.isin 5M", lambda: np.isin(keys, needed))
w3 = t("pc.is_in 5M", lambda: pc.is_in(pa.array(keys), value_set=pa.array(needed)).to_numpy(zero_copy_only=False))
assert (w1 == w2).all() and (w1 == w3).all()
w4 = t("is_in_sorted (bitmap + searchsorted)", lambda: is_in_sorted(keys, needed))
assert (w1 == w4).all()
ko = keys[~w1]
t("argsort 4.1M (dedupe)", lambda: np.argsort(ko))
t("np.sort 4.1M", lambda: np.sort(ko))
t("pc.count_distinct 4.1M", lambda: pc.count_distinct(pa.array(ko)))
chk = rng.integers(-(2**63), 2**63 - 1, len(ko), dtype=np.int64)


def grp():
    g = pa.table({"k": ko, "c": chk}).group_by("k").aggregate([("c", "min"), ("c", "max")])
    return g.num_rows, pc.any(pc.not_equal(g["c_min"], g["c_max"]))


t("group_by min/max 4.1M", grp)
