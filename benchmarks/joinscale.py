"""Large customer tables, a day that landed twice, and many small files: the scaling cases of the join and the reads.

    .venv/bin/python -m benchmarks.joinscale --cases int-333k,string-5M --repeat 2 --baseline /tmp/base

Every case runs the pipeline CLI as a subprocess on the same 1M reviews (one day), measured like `make bench`
(wall time, peak RSS of the process tree); with --baseline DIR each case also runs from DIR (a checkout of the code
before the change, with its own transforms/_tokens*.so), round-robin in the same invocation, so the ratios compare
runs under the same machine load. The `files-1000` case plans 1,000 small review files on a loopback S3 server
(moto), footer reads one at a time against all at once.

Data is generated once, vectorized, under benchmarks/data/joinscale/ (git-ignored):
- base: `write_sample_data(reviews=1M, customers=333,333)`; the reviews' customer ids (and their 0.5 % of
  missing customers) are the same in every case, so every case must score and reject exactly the same rows;
- string variants: every id `i` becomes `"cust-%012d" % i` (17 bytes), in the reviews and in the customers;
- larger customer tables: the base customers plus synthetic ones with ids nobody reviews, 1M rows per file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from benchmarks.common import DATA, DATE, ROOT, WORK
from benchmarks.run import ensure_model, machine, measure

HERE = os.path.join(DATA, "joinscale")
REVIEWS = 1_000_000
BASE_CUSTOMERS = 333_333
ROWS_PER_FILE = 1_000_000
ROW_GROUP = 100_000
# Synthetic customers' ids start far above anything the base data uses (its missing customers included).
EXTRA_ID_BASE = 10**12
README = os.path.join(os.path.dirname(__file__), "README.md")
BEGIN, END = "<!-- joinscale:begin -->", "<!-- joinscale:end -->"

# name: (customers, id kind, reviews, settings for this tree's config; the baseline runs with configs/local.yaml)
CASES = {
    "int-333k": (BASE_CUSTOMERS, "int", "single", {}),
    "string-333k": (BASE_CUSTOMERS, "string", "single", {}),
    "int-5M": (5_000_000, "int", "single", {}),
    "string-5M": (5_000_000, "string", "single", {}),
    "int-20M-shuffle": (20_000_000, "int", "single", {"broadcast_limit_mb": 0}),
    "int-333k-twice": (BASE_CUSTOMERS, "int", "twice", {}),
}


def _string_ids(ids: pa.Array) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(ids, pa.string()), 12, "0")
    return pc.binary_join_element_wise("cust-", digits, "")


def _marked(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, ".complete"))


def _mark(directory: str, started: float) -> None:
    open(os.path.join(directory, ".complete"), "w").close()
    print(f"generated {directory} in {time.time() - started:.1f}s", flush=True)


def _base() -> str:
    root = os.path.join(HERE, "base")
    if not _marked(root):
        from pipeline.sample_data import write_sample_data

        shutil.rmtree(root, ignore_errors=True)
        started = time.time()
        write_sample_data(root, reviews=REVIEWS, days=1, customers=BASE_CUSTOMERS, end_date=DATE)
        _mark(root, started)
    return root


def _rewrite(source: str, target: str, convert) -> None:
    """Copies every Parquet file below source to target, row group by row group, through convert(table)."""
    for folder, _, names in os.walk(source):
        for name in sorted(n for n in names if n.endswith(".parquet")):
            path = os.path.join(folder, name)
            out = os.path.join(target, os.path.relpath(path, source))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            parquet = pq.ParquetFile(path)
            writer = None
            for g in range(parquet.num_row_groups):
                table = convert(parquet.read_row_group(g))
                writer = writer or pq.ParquetWriter(out, table.schema)
                writer.write_table(table, row_group_size=ROW_GROUP)
            writer.close()


def _with_string_ids(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("customer_id")
    return table.set_column(index, "customer_id", _string_ids(table["customer_id"]))


def reviews_dir(kind: str, layout: str) -> str:
    """The day's reviews: 1M rows with integer or string customer ids; `twice` holds the same file two times."""
    single = os.path.join(_base(), "reviews") if kind == "int" else os.path.join(HERE, "reviews-string")
    if kind == "string" and not _marked(single):
        started = time.time()
        shutil.rmtree(single, ignore_errors=True)
        _rewrite(os.path.join(_base(), "reviews"), single, _with_string_ids)
        _mark(single, started)
    if layout == "single":
        return single
    twice = os.path.join(HERE, f"reviews-{kind}-twice")
    if not _marked(twice):
        started = time.time()
        shutil.rmtree(twice, ignore_errors=True)
        day = os.path.join(twice, f"dt={DATE}")
        os.makedirs(day)
        for copy in ("a", "b"):
            for name in sorted(os.listdir(os.path.join(single, f"dt={DATE}"))):
                shutil.copy(os.path.join(single, f"dt={DATE}", name), os.path.join(day, f"{copy}-{name}"))
        _mark(twice, started)
    return twice


def customers_dir(count: int, kind: str) -> str:
    """The base customers plus count - 333,333 synthetic ones, integer or string ids, 1M rows per file."""
    if count == BASE_CUSTOMERS and kind == "int":
        return os.path.join(_base(), "customers")
    root = os.path.join(HERE, f"customers-{kind}-{count}")
    if _marked(root):
        return root
    started = time.time()
    shutil.rmtree(root, ignore_errors=True)
    convert = _with_string_ids if kind == "string" else (lambda t: t)
    _rewrite(os.path.join(_base(), "customers"), root, convert)
    rng = np.random.default_rng(20261128)
    extra = count - BASE_CUSTOMERS
    for part, start in enumerate(range(0, extra, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, extra - start)
        ids = pa.array(np.arange(EXTRA_ID_BASE + start, EXTRA_ID_BASE + start + n, dtype=np.int64))
        table = pa.table(
            {
                "customer_id": _string_ids(ids) if kind == "string" else ids,
                "age": pa.array(rng.integers(18, 86, n).astype(np.float64)),
                "purchase_history": pa.array(np.round(rng.lognormal(5.0, 1.1, n), 2)),
            }
        )
        pq.write_table(table, os.path.join(root, f"extra-{part:05d}.parquet"), row_group_size=ROW_GROUP)
    _mark(root, started)
    return root


def _config(work: str, name: str, settings: dict) -> str:
    """configs/local.yaml with the case's settings on top, written beside the case's outputs."""
    with open(os.path.join(ROOT, "configs", "local.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config.update(settings)
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def run_cases(names: list[str], repeat: int, baseline: str | None) -> dict:
    model = ensure_model()
    work = os.path.join(WORK, "joinscale")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    trees = {"this": ROOT, **({"baseline": os.path.abspath(baseline)} if baseline else {})}
    commands = {}
    for name in names:
        count, kind, layout, settings = CASES[name]
        inputs = ["--customers", customers_dir(count, kind), "--reviews", reviews_dir(kind, layout)]
        for tree, root in trees.items():
            config = _config(work, name, settings) if tree == "this" else os.path.join(root, "configs", "local.yaml")
            output = os.path.join(work, f"{name}-{tree}")
            cli = [sys.executable, "-m", "pipeline", "score", "--config", config, "--date", DATE, *inputs]
            commands[(name, tree)] = (cli + ["--model-dir", model, "--output", output], root, output)
    runs: dict = {key: [] for key in commands}
    for repetition in range(repeat):
        for key, (command, root, output) in commands.items():
            shutil.rmtree(output, ignore_errors=True)
            log = os.path.join(work, f"{key[0]}-{key[1]}-{repetition}.log")
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            result = measure(f"{key[0]} [{key[1]}]", command, log, cwd=root)
            result["load"] = float(load)
            if "rows" in result:
                result["rows_per_s"] = round(result["rows"] / result["wall_s"])
                result["outcome"] = _outcome(output)
            runs[key].append(result)
            print(f"    {json.dumps(result)}", flush=True)
    return {f"{name} [{tree}]": rs for (name, tree), rs in runs.items()}


def _outcome(output: str) -> dict:
    with open(os.path.join(output, f"dt={DATE}", "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {"rows": summary["rows"], "rejected_by_reason": summary["rejected_by_reason"], **summary["customers"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="int-333k,string-5M", help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every case, round-robin")
    parser.add_argument("--baseline", help="a checkout of the code to compare with, run the same way")
    parser.add_argument("--generate-only", action="store_true", help="write the cases' data and stop")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}")
    if args.generate_only:
        for name in names:
            count, kind, layout, _ = CASES[name]
            customers_dir(count, kind), reviews_dir(kind, layout)
        return
    started = dt.datetime.now().isoformat(timespec="seconds")
    runs = run_cases(names, args.repeat, args.baseline)
    print(json.dumps({"started": started, "machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
