"""`make bench`: rows/s and peak memory of the scoring pipeline next to the model's own limit and two baselines.

Every contender runs as its own subprocess, one after another, in one invocation, so the ratios between them are
measured under the same machine load; with --repeat N the contenders run N times round-robin and the fastest run of
each counts. Results go to benchmarks/results.json and a table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata

from benchmarks.common import DATA, DATE, MODEL_DIR, RESULT_PREFIX, ROOT, WORK, data_dir, write_readme

CONTENDERS = ("model_only", "pipeline_in_memory", "pipeline_multi_processing", "per_row_beam", "pandas_keras")
LABELS = {
    "model_only": "(a) model only, pre-built arrays",
    "pipeline_in_memory": "(b) pipeline CLI, in-memory",
    "pipeline_multi_processing": "(b) pipeline CLI, multi_processing x2",
    "per_row_beam": "(c) per-row Beam baseline",
    "pandas_keras": "(d) pandas + Keras script",
}
README = os.path.join(os.path.dirname(__file__), "README.md")
RESULTS = os.path.join(os.path.dirname(__file__), "results.json")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1024**3


def ensure_data(reviews: int) -> str:
    """Sample data of the given size, generated once and cached under benchmarks/data."""
    root = data_dir(reviews)
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        from pipeline.sample_data import write_sample_data

        shutil.rmtree(root, ignore_errors=True)
        started = time.time()
        write_sample_data(root, reviews=reviews, days=1, end_date=DATE)
        open(marker, "w").close()
        print(f"generated {reviews} reviews in {time.time() - started:.0f}s", flush=True)
    return root


def ensure_model() -> str:
    """The benchmark's model bundle, trained once on a 3000-review sample with the product's own CLI."""
    if not os.path.exists(os.path.join(MODEL_DIR, "metadata.json")):
        root = ensure_data(3000)
        cli = [sys.executable, "-m", "pipeline", "train", "--customers", os.path.join(root, "customers")]
        cli += ["--reviews", os.path.join(root, "reviews"), "--model-dir", MODEL_DIR]
        subprocess.run(cli, check=True, cwd=ROOT, env=_env())
    return MODEL_DIR


def _env(root: str = ROOT) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": root}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants, summed, read from /proc."""
    tree, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(tree.get(pid, []))
    return total


def measure(name: str, command: list[str], log_path: str, cwd: str = ROOT) -> dict:
    """Runs one contender (from cwd, which is also its PYTHONPATH: another checkout runs its own code); wall time,
    the peak of its process tree's summed RSS (sampled every 50 ms) and the largest single process's ru_maxrss
    (wait4), plus whatever it reported on its result line."""
    print(f"  {name}: {' '.join(command[2:])}", flush=True)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=_env(cwd), stdout=log, stderr=subprocess.STDOUT)
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log_path) as f:
        output = f.read()
    result = {"wall_s": round(wall, 2), "peak_rss_tree_gb": round(peak[0] / GIB, 3)}
    result["max_process_rss_gb"] = round(usage.ru_maxrss * 1024 / GIB, 3)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)  # with the descendants it waited for
    if proc.returncode != 0:
        print(output[-3000:], file=sys.stderr)
        return {**result, "error": f"exit code {proc.returncode}, log {log_path}"}
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            result.update(json.loads(line[len(RESULT_PREFIX) :]))
        match = re.search(r"done: .* = (\d+) read in ([\d.]+)s \((\d+) rows/s\)", line)
        if match:
            result.update(rows=int(match[1]), pipeline_s=float(match[2]), pipeline_rows_per_s=int(match[3]))
    return result


def _best(runs: list[dict]) -> dict:
    """One contender's repetitions as one result: the fastest run's figures (machine load only ever slows a run
    down), every run's rows/s, and the highest peak RSS of any run. A failed repetition fails the contender."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    timed = [r for r in runs if "rows_per_s" in r]
    if not timed:
        return runs[-1]
    best = dict(max(timed, key=lambda r: r["rows_per_s"]))
    best["repetitions"] = [r["rows_per_s"] for r in timed]
    best["peak_rss_tree_gb"] = max(r["peak_rss_tree_gb"] for r in runs)
    best["max_process_rss_gb"] = max(r["max_process_rss_gb"] for r in runs)
    return best


def run_size(reviews: int, contenders: list[str], model_rows: int, repeat: int = 1) -> dict:
    root = ensure_data(reviews)
    work = os.path.join(WORK, str(reviews))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    py = [sys.executable, "-m"]
    cli = py + ["pipeline", "score", "--config", os.path.join(ROOT, "configs", "local.yaml"), "--date", DATE]
    cli += ["--customers", os.path.join(root, "customers"), "--reviews", os.path.join(root, "reviews")]
    cli += ["--model-dir", MODEL_DIR]
    outputs = {
        "pipeline_in_memory": os.path.join(work, "in-memory"),
        "pipeline_multi_processing": os.path.join(work, "multi"),
        "per_row_beam": os.path.join(work, "per-row"),
        "pandas_keras": os.path.join(work, "pandas"),
    }
    commands = {
        "model_only": py + ["benchmarks.model_only", "--data", root, "--max-rows", str(model_rows)],
        "pipeline_in_memory": cli + ["--output", outputs["pipeline_in_memory"]],
        "pipeline_multi_processing": cli
        + [
            "--output",
            outputs["pipeline_multi_processing"],
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ],
        "per_row_beam": py + ["benchmarks.per_row_beam", "--data", root, "--output", outputs["per_row_beam"]],
        "pandas_keras": py + ["benchmarks.pandas_keras", "--data", root, "--output", outputs["pandas_keras"]],
    }
    runs = {name: [] for name in contenders}
    print(f"{reviews} reviews:", flush=True)
    # Round-robin repetitions: a burst of load on the shared machine hits one run of a contender, not all of them.
    for repetition in range(repeat):
        for name in contenders:
            if name in outputs:
                shutil.rmtree(outputs[name], ignore_errors=True)  # every repetition writes from scratch
            result = measure(name, commands[name], os.path.join(work, f"{name}-{repetition}.log"))
            if "rows" in result:
                timed = result["seconds"] if name == "model_only" else result["wall_s"]
                result["rows_per_s"] = round(result["rows"] / timed)
            runs[name].append(result)
            print(f"    {json.dumps(result)}", flush=True)
    results = {name: _best(runs[name]) for name in contenders}
    limit = results.get("model_only", {}).get("rows_per_s")
    for result in results.values():
        if limit and "rows_per_s" in result:
            result["x_model_limit"] = round(result["rows_per_s"] / limit, 3)
    return results


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    packages = ("apache-beam", "tensorflow-cpu", "keras", "pyarrow", "numpy", "pandas")
    versions = {p: metadata.version(p) for p in packages}
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        **versions,
    }


def targets(sizes: dict) -> list[str]:
    """The issue's targets, checked on the largest and smallest sizes of this run."""
    if len(sizes) < 2:
        return ["(targets need two sizes: run `make bench`)"]
    small, large = sizes[min(sizes)], sizes[max(sizes)]
    ratio_rows = max(sizes) / min(sizes)
    lines = []
    for mode in ("pipeline_in_memory", "pipeline_multi_processing"):
        p, q = large.get(mode, {}), small.get(mode, {})
        if "rows_per_s" not in p:
            continue

        def check(ok, text, mode=mode):
            lines.append(f"- {'MET' if ok else 'NOT MET'}: {LABELS[mode]}: {text}")

        if "x_model_limit" in p:
            check(p["x_model_limit"] >= 0.7, f"{p['x_model_limit']:.2f} x model-only limit (target >= 0.7)")
        for base, target in (("per_row_beam", 10), ("pandas_keras", 4)):
            if "rows_per_s" in large.get(base, {}):
                x = p["rows_per_s"] / large[base]["rows_per_s"]
                check(x >= target, f"{x:.1f} x {LABELS[base]} (target >= {target})")
        check(p["peak_rss_tree_gb"] <= 1.5, f"peak RSS {p['peak_rss_tree_gb']:.2f} GB (target <= 1.5)")
        if "peak_rss_tree_gb" in q:
            growth = p["peak_rss_tree_gb"] / q["peak_rss_tree_gb"]
            check(growth < 1.3, f"peak RSS grows {growth:.2f} x from {min(sizes)} to {max(sizes)} (target < 1.3)")
        if "wall_s" in q:
            wall = p["wall_s"] / q["wall_s"]
            pipe = p.get("pipeline_s", 0) / max(q.get("pipeline_s", 0), 1e-9)
            lines.append(
                f"- info: {LABELS[mode]}: wall time x{wall:.1f}, pipeline time x{pipe:.1f} for x{ratio_rows:.0f} rows"
            )
    return lines


def table(run: dict) -> str:
    m = run["machine"]
    out = [
        f"Run {run['started']}: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Beam {m['apache-beam']}, TensorFlow {m['tensorflow-cpu']}, Keras {m['keras']}, pyarrow {m['pyarrow']}, "
        f"numpy {m['numpy']}, pandas {m['pandas']}. Every contender ran {run.get('repeat', 1)} time(s), round-robin; "
        "the fastest run counts (peak RSS: the highest of any run).",
        "",
        "| reviews | contender | wall s | CPU s | rows/s | x model limit | peak RSS GB (tree) | max process RSS GB "
        "| notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size, results in sorted(run["sizes"].items(), key=lambda kv: int(kv[0])):
        for name, r in results.items():
            if "error" in r:
                out.append(f"| {int(size):,} | {LABELS[name]} | {r['wall_s']} | | failed | | | | {r['error']} |")
                continue
            notes = ""
            if name == "model_only":
                v = r["variants"]
                notes = f"best: {r['best']} on {r['rows']:,} rows; " + ", ".join(
                    f"{k} {x['rows_per_s']:,}" for k, x in v.items()
                )
            elif "pipeline_rows_per_s" in r:
                notes = f"pipeline's own line: {r['pipeline_s']} s, {r['pipeline_rows_per_s']:,} rows/s"
            if len(r.get("repetitions", [])) > 1:
                notes += f"{'; ' if notes else ''}best of {', '.join(f'{x:,}' for x in r['repetitions'])}"
            out.append(
                f"| {int(size):,} | {LABELS[name]} | {r['wall_s']} | {r.get('cpu_s', '')} | {r.get('rows_per_s', 0):,} "
                f"| {r.get('x_model_limit', '')} | {r['peak_rss_tree_gb']} | {r['max_process_rss_gb']} | {notes} |"
            )
    out += ["", "Targets (issue), from this run:", "", *run["targets"]]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="200000,2000000", help="comma-separated review counts")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    parser.add_argument(
        "--model-rows", type=int, default=262_144, help="rows the model-only limit is timed on (shapes are fixed)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every contender, round-robin; the fastest run of each counts"
    )
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")
    os.makedirs(DATA, exist_ok=True)
    ensure_model()
    run = {"started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "repeat": args.repeat}
    run["sizes"] = {}
    for size in sizes:
        run["sizes"][str(size)] = run_size(size, contenders, args.model_rows, args.repeat)
    run["targets"] = targets({int(k): v for k, v in run["sizes"].items()})
    with open(RESULTS, "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
    text = table(run)
    print("\n" + text)
    if not args.no_readme:
        write_readme(text, BEGIN, END)
    print(f"\nwrote {RESULTS}" + ("" if args.no_readme else f" and {README}"))


if __name__ == "__main__":
    main()
