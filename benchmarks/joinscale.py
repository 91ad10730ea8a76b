"""Large customer tables, a day that landed twice, and many small files: the scaling cases of the join and the reads.

    .venv/bin/python -m benchmarks.joinscale --cases int-333k,string-5M --repeat 2 --baseline /tmp/base

Every case runs the pipeline CLI as a subprocess on the same 1M reviews (one day), measured like `make bench`
(wall time, peak RSS of the process tree); with --baseline DIR each case also runs from DIR (a checkout of the code
before the change, with its own transforms/_tokens*.so), round-robin in the same invocation, so the ratios compare
runs under the same machine load. The `files-1000` case lists and reads the footers of 1,000 small review files on a
loopback S3 server (moto), from each tree (`--files N` for another count).

Data is generated once, vectorized, under benchmarks/data/joinscale/ (git-ignored):
- base: `write_sample_data(reviews=1M, customers=333,333)`; the reviews' customer ids (and their 0.5 % of
  missing customers) are the same in every case, so every case must score and reject exactly the same rows;
- string variants: every id `i` becomes `"cust-%012d" % i` (17 bytes), in the reviews and in the customers;
- larger customer tables: the base customers plus synthetic ones with ids nobody reviews, 1M rows per file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from benchmarks.common import DATA, DATE, ROOT, WORK, write_readme
from benchmarks.run import ensure_data, ensure_model, machine, measure

HERE = os.path.join(DATA, "joinscale")
REVIEWS = 1_000_000
BASE_CUSTOMERS = 333_333
ROWS_PER_FILE = 1_000_000
ROW_GROUP = 100_000
# Synthetic customers' ids start far above anything the base data uses (its missing customers included).
EXTRA_ID_BASE = 10**12
BEGIN, END = "<!-- joinscale:begin -->", "<!-- joinscale:end -->"

# name: (customers, id kind, reviews, settings for both trees' configs, settings for this tree only, also run the
# baseline). Each tree starts from its own configs/local.yaml. The baseline does not run the 20M case (ToList of 20M
# customer rows: ~10 GB by the 5M measurement).
CASES = {
    "int-333k": (BASE_CUSTOMERS, "int", "single", {}, {}, True),
    "string-333k": (BASE_CUSTOMERS, "string", "single", {}, {}, True),
    "int-5M": (5_000_000, "int", "single", {}, {}, True),
    "string-5M": (5_000_000, "string", "single", {}, {}, True),
    # Issue 19's case: every review asks for a random one of the 5M customers (~905k distinct), not the base 333k.
    "string-5M-random": (5_000_000, "string", "random", {}, {}, True),
    "int-20M-shuffle": (20_000_000, "int", "single", {}, {"broadcast_limit_mb": 0}, False),
    # Half the day's rows are duplicates: above the default reject ceiling, which would refuse to publish it.
    "int-333k-twice": (BASE_CUSTOMERS, "int", "twice", {"max_reject_fraction": 0.6}, {}, True),
    "sample-2M": (None, "int", "sample-2M", {}, {}, True),  # benchmarks.run's 2M-review data: the README's case
}
FILES_CASE = "files-1000"


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
        from pipeline.training.sample_data import write_sample_data

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
    if layout == "random":
        return _random_customers(single, kind)
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


def _random_customers(single: str, kind: str, count: int = 5_000_000) -> str:
    """The day's reviews with every customer id that exists replaced by a random one of `count` customers (the base
    ones and the synthetic ones of customers_dir(count, kind)); ids of missing customers stay missing."""
    root = os.path.join(HERE, f"reviews-{kind}-random-{count}")
    if _marked(root):
        return root
    started = time.time()
    shutil.rmtree(root, ignore_errors=True)
    base_ids = pa.concat_tables(
        pq.read_table(os.path.join(folder, n), columns=["customer_id"])
        for folder, _, names in os.walk(os.path.join(_base(), "customers"))
        for n in sorted(names)
        if n.endswith(".parquet")
    )["customer_id"].combine_chunks()
    known = _string_ids(base_ids) if kind == "string" else base_ids
    extra = count - len(base_ids)
    rng = np.random.default_rng(20261204)

    def convert(table: pa.Table) -> pa.Table:
        ids = table["customer_id"].combine_chunks()
        pick = rng.integers(0, count, len(ids))
        synthetic = pa.array(EXTRA_ID_BASE + np.minimum(pick, extra - 1), pa.int64())
        known_pick = pc.take(base_ids, np.minimum(pick, len(base_ids) - 1))
        chosen = pc.if_else(pa.array(pick < len(base_ids)), known_pick, synthetic)
        chosen = _string_ids(chosen) if kind == "string" else chosen
        index = table.schema.get_field_index("customer_id")
        return table.set_column(index, "customer_id", pc.if_else(pc.is_in(ids, known), chosen, ids))

    _rewrite(single, root, convert)
    _mark(root, started)
    return root


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


def _config(work: str, name: str, tree: str, root: str, settings: dict) -> str:
    """The tree's configs/local.yaml with the case's settings on top, written beside the case's outputs."""
    with open(os.path.join(root, "configs", "local.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config.update(settings)
    path = os.path.join(work, f"{name}-{tree}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def _inputs(name: str) -> list[str]:
    count, kind, layout = CASES[name][:3]
    if layout == "sample-2M":
        root = ensure_data(2_000_000)
        return ["--customers", os.path.join(root, "customers"), "--reviews", os.path.join(root, "reviews")]
    return ["--customers", customers_dir(count, kind), "--reviews", reviews_dir(kind, layout)]


def run_cases(names: list[str], repeat: int, baseline: str | None) -> dict:
    model = ensure_model()
    work = os.path.join(WORK, "joinscale")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    trees = {"this": ROOT, **({"baseline": os.path.abspath(baseline)} if baseline else {})}
    commands = {}
    for name in names:
        both, this_only, with_baseline = CASES[name][3:]
        inputs = _inputs(name)
        for tree, root in trees.items():
            if tree == "baseline" and not with_baseline:
                continue
            config = _config(work, name, tree, root, {**both, **(this_only if tree == "this" else {})})
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
    from pipeline.publish.parquet import published_summary  # the summary the partition's manifest lists

    summary = published_summary(os.path.join(output, f"dt={DATE}"))
    return {"rows": summary["rows"], "rejected_by_reason": summary["rejected_by_reason"], **summary["customers"]}


_PLAN_SNIPPET = """
import json, sys, time
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.run.config import build_config
from pipeline.run.plan import _inspect_reviews
from transforms.io import resolve_files
flags, settings = json.loads(sys.argv[1]), json.loads(sys.argv[2])
FileSystems.set_options(PipelineOptions(flags))
config = build_config(settings)
started = time.perf_counter()
paths = resolve_files(settings["reviews"])
files = _inspect_reviews({settings["date"]: paths}, config, {})
print(json.dumps({"plan_s": time.perf_counter() - started, "files": len(files)}))
"""


def plan_files(count: int, repeat: int, baseline: str | None) -> dict:
    """Lists and reads the footers of `count` review files of 1,000 rows on a moto S3 server on loopback, from each
    tree in a subprocess of its own (the baseline once: it takes minutes)."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        for _ in range(150):
            try:
                client.list_buckets()
                break
            except Exception:  # not answering yet
                time.sleep(0.2)
        client.create_bucket(Bucket="bench-files")
        reviews = pq.read_table(os.path.join(reviews_dir("int", "single"), f"dt={DATE}", "part-00000.parquet"))
        bodies = []
        for i in range(count):
            sink = pa.BufferOutputStream()
            pq.write_table(reviews.slice((i * 1000) % (reviews.num_rows - 1000), 1000), sink)
            bodies.append((f"reviews/dt={DATE}/part-{i:05d}.parquet", sink.getvalue().to_pybytes()))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket="bench-files", Key=kv[0], Body=kv[1]), bodies))
        flags = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=k", "--s3_secret_access_key=s"]
        flags.append("--s3_region_name=us-east-1")
        settings = {"customers": "unused", "reviews": f"s3://bench-files/reviews/dt={DATE}", "date": DATE}
        settings.update(model_dir="unused", output="unused")
        trees = {"this": ROOT, **({"baseline": os.path.abspath(baseline)} if baseline else {})}
        seconds: dict = {tree: [] for tree in trees}
        for repetition in range(repeat):
            for tree, root in trees.items():
                if tree == "baseline" and repetition:
                    continue
                command = [sys.executable, "-c", _PLAN_SNIPPET, json.dumps(flags), json.dumps(settings)]
                done = subprocess.run(
                    command, cwd=root, env={**env, "PYTHONPATH": root}, capture_output=True, text=True
                )
                if done.returncode:
                    raise RuntimeError(f"planning from {root} failed: {done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                assert result["files"] == count, result
                seconds[tree].append(round(result["plan_s"], 2))
                print(f"  {FILES_CASE} [{tree}]: {seconds[tree][-1]} s", flush=True)
        return {"files": count, "rows_per_file": 1000, "plan_s": seconds}
    finally:
        server.terminate()
        server.wait()


def _best(runs: list[dict]) -> dict:
    """The fastest run's figures, every run's rows/s and load, and the highest peak RSS of any run."""
    timed = [r for r in runs if "rows_per_s" in r]
    if len(timed) < len(runs):
        return next(r for r in runs if "rows_per_s" not in r)
    best = dict(max(timed, key=lambda r: r["rows_per_s"]))
    best["repetitions"] = [(r["rows_per_s"], r["load"]) for r in runs]
    best["peak_rss_tree_gb"] = max(r["peak_rss_tree_gb"] for r in runs)
    return best


def table(results: dict, files: dict | None) -> str:
    lines = [
        "| case | tree | wall s | CPU s | rows/s | x baseline | peak RSS GB | scored / rejected | customers unique / "
        "duplicate / null | runs (rows/s @ load) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for key, r in results.items():
        name, tree = key.split(" [")
        tree = tree.rstrip("]")
        if "rows_per_s" not in r:
            lines.append(f"| {name} | {tree} | {r['wall_s']} | | failed | | | {r.get('error', '')} | | |")
            continue
        base = results.get(f"{name} [baseline]", {})
        ratio = f"{r['rows_per_s'] / base['rows_per_s']:.2f}" if tree == "this" and "rows_per_s" in base else ""
        o = r["outcome"]
        facts = f"{o['customers_unique']:,} / {o['duplicate_customer_ids']:,} / {o['null_customer_ids']:,}"
        reps = ", ".join(f"{v:,} @ {load}" for v, load in r["repetitions"])
        lines.append(
            f"| {name} | {tree} | {r['wall_s']} | {r['cpu_s']} | {r['rows_per_s']:,} | {ratio} | "
            f"{r['peak_rss_tree_gb']} | {o['rows']['scored']:,} / {o['rows']['rejected']:,} | {facts} | {reps} |"
        )
    if files:
        lines += [
            "",
            f"Planning {files['files']:,} review files of {files['rows_per_file']:,} rows on the loopback S3 "
            "server (`plan_run`: list, bundle check, every footer; best of the runs):",
            "",
        ]
        for tree, seconds in files["plan_s"].items():
            lines.append(f"- {tree}: {min(seconds):.1f} s (runs: {', '.join(f'{s:.1f}' for s in seconds)})")
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """The issue's targets, from this tree's runs."""
    out = []

    def get(name):
        return results.get(f"{name} [this]", {})

    small, large, shuffle = get("int-333k"), get("string-5M"), get("int-20M-shuffle")
    spread = get("string-5M-random")
    if "rows_per_s" in small and "rows_per_s" in spread:
        x = spread["rows_per_s"] / small["rows_per_s"]
        rss = spread["peak_rss_tree_gb"]
        out.append(
            f"- {'MET' if x >= 0.75 and rss <= 2.0 else 'NOT MET'}: 1M reviews of random customers among 5M string "
            f"ids at {x:.2f} x the rows/s of 333k int ids (target >= 0.75), peak RSS {rss:.2f} GB (target <= 2.0)"
        )
    if "rows_per_s" in small and "rows_per_s" in large:
        x = large["rows_per_s"] / small["rows_per_s"]
        out.append(
            f"- {'MET' if x >= 0.75 else 'NOT MET'}: 5M string ids at {x:.2f} x the rows/s of 333k int ids "
            "(target >= 0.75)"
        )
        rss = large["peak_rss_tree_gb"]
        out.append(f"- {'MET' if rss <= 2.0 else 'NOT MET'}: 5M string ids peak RSS {rss:.2f} GB (target <= 2.0)")
        same = large["outcome"]["rows"] == small["outcome"]["rows"]
        same &= large["outcome"]["rejected_by_reason"] == small["outcome"]["rejected_by_reason"]
        out.append(
            f"- {'MET' if same else 'NOT MET'}: nothing lost: 5M string ids score and reject exactly what "
            "333k int ids do"
        )
    if shuffle:
        ok = "rows_per_s" in shuffle and shuffle["peak_rss_tree_gb"] <= 2.5
        out.append(
            f"- {'MET' if ok else 'NOT MET'}: 20M int ids through the shuffle join: "
            f"{'completed' if 'rows_per_s' in shuffle else 'failed'}, peak RSS "
            f"{shuffle['peak_rss_tree_gb']:.2f} GB (target <= 2.5)"
        )
    for name, what in (
        ("sample-2M", "2M reviews in memory (make bench's case; target: not worse)"),
        ("int-333k-twice", "a day that landed twice (1M duplicate review ids)"),
    ):
        this, base = get(name), results.get(f"{name} [baseline]", {})
        if "rows_per_s" in this and "rows_per_s" in base:
            x = this["rows_per_s"] / base["rows_per_s"]
            out.append(
                f"- info: {what}: {x:.2f} x the baseline's rows/s, peak RSS {this['peak_rss_tree_gb']:.2f} vs "
                f"{base['peak_rss_tree_gb']:.2f} GB"
            )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        default="int-333k,string-5M,int-20M-shuffle,int-333k-twice,sample-2M",
        help=f"comma-separated subset of {','.join([*CASES, FILES_CASE])}",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every case, round-robin")
    parser.add_argument("--baseline", help="a checkout of the code to compare with, run the same way")
    parser.add_argument("--files", type=int, default=1000, help=f"review files in the {FILES_CASE} case")
    parser.add_argument("--generate-only", action="store_true", help="write the cases' data and stop")
    parser.add_argument("--readme", action="store_true", help="write the results into benchmarks/README.md")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = set(names) - set(CASES) - {FILES_CASE}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}")
    cases = [n for n in names if n != FILES_CASE]
    if args.generate_only:
        for name in cases:
            _inputs(name)
        return
    started = dt.datetime.now().isoformat(timespec="seconds")
    runs = run_cases(cases, args.repeat, args.baseline) if cases else {}
    results = {key: _best(rs) for key, rs in runs.items()}
    files = plan_files(args.files, args.repeat, args.baseline) if FILES_CASE in names else None
    m = machine()
    header = (
        f"Run {started}: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Beam {m['apache-beam']}, "
        f"pyarrow {m['pyarrow']}, numpy {m['numpy']}; {args.repeat} run(s) of every case and tree round-robin, the "
        "fastest counts (peak RSS: the highest of any run); load = 1-minute load average when the run started."
    )
    text = "\n".join([header, "", table(results, files), "", "Targets (issue), from this run:", "", *targets(results)])
    print(json.dumps({"started": started, "machine": m, "runs": runs, "files": files}, indent=1))
    print("\n" + text)
    if args.readme:
        write_readme(text, BEGIN, END)


if __name__ == "__main__":
    main()
