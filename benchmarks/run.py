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

import yaml

from benchmarks.common import DATA, DATE, MODEL_DIR, RESULT_PREFIX, ROOT, WORK, data_dir, write_readme

CONTENDERS = (
    "model_only",
    "pipeline_in_memory",
    "pipeline_in_memory_tf",
    "pipeline_multi_processing",
    "stock_beam",
    "per_row_beam",
    "pandas_keras",
)
# A backfill case scores DAYS days of REVIEWS reviews each in one `backfill` run (start-up paid once).
BACKFILL_CONTENDERS = ("model_only", "pipeline_backfill", "pipeline_backfill_tf")
LABELS = {
    "model_only": "(a) model only, pre-built arrays",
    "pipeline_in_memory": "(b) pipeline CLI, in-memory, litert",
    "pipeline_in_memory_tf": "(b) pipeline CLI, in-memory, tensorflow",
    "pipeline_multi_processing": "(b) pipeline CLI, multi_processing x2, litert",
    "pipeline_backfill": "(b) pipeline backfill CLI, in-memory, litert",
    "pipeline_backfill_tf": "(b) pipeline backfill CLI, in-memory, tensorflow",
    "stock_beam": "(e) skilled stock-Beam job",
    "per_row_beam": "(c) per-row Beam baseline",
    "pandas_keras": "(d) pandas + Keras script",
}
README = os.path.join(os.path.dirname(__file__), "README.md")
SPLIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_split.py")
PIPELINES = ("pipeline_in_memory", "pipeline_in_memory_tf", "pipeline_multi_processing", "pipeline_backfill")
PIPELINES += ("pipeline_backfill_tf",)
BASE = "@base"
RESULTS = os.path.join(os.path.dirname(__file__), "results.json")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1024**3


def ensure_data(reviews: int, days: int = 1) -> str:
    """Sample data of `reviews` reviews a day over `days` days ending at DATE, generated once, cached in DATA."""
    root = data_dir(reviews) if days == 1 else os.path.join(DATA, f"backfill-{days}x{reviews}")
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        from pipeline.training.sample_data import write_sample_data

        shutil.rmtree(root, ignore_errors=True)
        started = time.time()
        write_sample_data(root, reviews=reviews * days, days=days, end_date=DATE)
        open(marker, "w").close()
        print(f"generated {days} x {reviews} reviews in {time.time() - started:.0f}s", flush=True)
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


def run_sampled(command: list[str], cwd: str, env: dict, stdout) -> tuple[float, int, object, int]:
    """Runs command to the end with stdout and stderr to the file `stdout`: (wall seconds, exit code, its wait4
    rusage (its CPU includes the children it waited for), the peak of its process tree's summed RSS in bytes,
    sampled every 50 ms)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT)
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
    return wall, proc.returncode, usage, peak[0]


def measure(name: str, command: list[str], log_path: str, cwd: str = ROOT) -> dict:
    """Runs one contender (from cwd, which is also its PYTHONPATH: another checkout runs its own code); wall time,
    the peak of its process tree's summed RSS (sampled every 50 ms) and the largest single process's ru_maxrss
    (wait4), plus whatever it reported on its result line."""
    print(f"  {name}: {' '.join(command[2:])}", flush=True)
    with open(log_path, "w") as log:
        wall, returncode, usage, peak = run_sampled(command, cwd, _env(cwd), log)
    with open(log_path) as f:
        output = f.read()
    result = {"wall_s": round(wall, 2), "peak_rss_tree_gb": round(peak / GIB, 3)}
    result["max_process_rss_gb"] = round(usage.ru_maxrss * 1024 / GIB, 3)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)  # with the descendants it waited for
    if returncode != 0:
        print(output[-3000:], file=sys.stderr)
        return {**result, "error": f"exit code {returncode}, log {log_path}"}
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
    best["loads"] = [r["load"] for r in timed if "load" in r]
    best["cpu_repetitions"] = [r["cpu_s"] for r in timed]
    best["peak_rss_tree_gb"] = max(r["peak_rss_tree_gb"] for r in runs)
    best["max_process_rss_gb"] = max(r["max_process_rss_gb"] for r in runs)
    return best


def _config(runtime: str, work: str) -> str:
    """configs/local.yaml with the model runtime set (the CLI has no flag for it)."""
    path = os.path.join(work, f"local-{runtime}.yaml")
    with open(os.path.join(ROOT, "configs", "local.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}  # a mapping (local.yaml is `{}` now), so parsed, not appended to
    config["runtime"] = runtime
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def _commands(root: str, work: str, days: int, model_rows: int) -> tuple[dict, dict]:
    """Every contender's command line and output folder, for the data under root."""
    py = [sys.executable, "-m"]
    first = (dt.date.fromisoformat(DATE) - dt.timedelta(days=days - 1)).isoformat()
    days_args = ["--date", DATE] if days == 1 else ["--start", first, "--end", DATE]

    def cli(runtime: str) -> list[str]:
        # Through the CPU-split instrument (this tree's file, whichever tree's code runs): the job's CLI, unchanged,
        # with its per-stage CPU on the result line. Its cost is two thread_time() calls per step and table.
        command = [sys.executable, SPLIT, "score" if days == 1 else "backfill", "--config", _config(runtime, work)]
        command += days_args + ["--customers", os.path.join(root, "customers")]
        return command + ["--reviews", os.path.join(root, "reviews"), "--model-dir", MODEL_DIR]

    names = CONTENDERS[1:] + BACKFILL_CONTENDERS[1:]
    outputs = {name: os.path.join(work, name) for name in names}
    multi = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    commands = {
        "model_only": py + ["benchmarks.model_only", "--data", root, "--max-rows", str(model_rows)],
        "pipeline_in_memory": cli("litert") + ["--output", outputs["pipeline_in_memory"]],
        "pipeline_in_memory_tf": cli("tensorflow") + ["--output", outputs["pipeline_in_memory_tf"]],
        "pipeline_multi_processing": cli("litert") + ["--output", outputs["pipeline_multi_processing"], *multi],
        "pipeline_backfill": cli("litert") + ["--output", outputs["pipeline_backfill"]],
        "pipeline_backfill_tf": cli("tensorflow") + ["--output", outputs["pipeline_backfill_tf"]],
    }
    for name in ("stock_beam", "per_row_beam", "pandas_keras"):
        commands[name] = py + [f"benchmarks.{name}", "--data", root, "--output", outputs[name]]
    return commands, outputs


def run_case(
    key: str, reviews: int, days: int, contenders: list[str], model_rows: int, repeat: int = 1, baseline: str = ""
) -> dict:
    """Runs the contenders on `days` days of `reviews` reviews, `repeat` times round-robin; the best run of each.
    With a baseline tree, each pipeline contender also runs from it (as NAME@base), right after its own run."""
    root = ensure_data(reviews, days)
    work = os.path.join(WORK, key)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    commands, outputs = _commands(root, work, days, model_rows)
    order = []
    for name in contenders:
        order.append(name)
        if baseline and name in PIPELINES:
            base = name + BASE
            outputs[base] = outputs[name] + "-base"
            commands[base] = [outputs[base] if a == outputs[name] else a for a in commands[name]]
            order.append(base)
    runs = {name: [] for name in order}
    print(f"{key}:", flush=True)
    # Round-robin repetitions: a burst of load on the shared machine hits one run of a contender, not all of them.
    for repetition in range(repeat):
        for name in order:
            if name in outputs:
                shutil.rmtree(outputs[name], ignore_errors=True)  # every repetition writes from scratch
            cwd = baseline if name.endswith(BASE) else ROOT
            result = measure(name, commands[name], os.path.join(work, f"{name}-{repetition}.log"), cwd=cwd)
            result["load"] = os.getloadavg()[0]
            if "rows" in result:
                timed = result["seconds"] if name == "model_only" else result["wall_s"]
                result["rows_per_s"] = round(result["rows"] / timed)
            runs[name].append(result)
            print(f"    {json.dumps(result)}", flush=True)
    results = {name: _best(runs[name]) for name in order}
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


def label(name: str) -> str:
    if name.endswith(BASE):
        return f"{LABELS[name[: -len(BASE)]]}, baseline tree"
    return LABELS[name]


def _outside_model(result: dict) -> float | None:
    split = result.get("split", {}).get("us_per_row")
    return sum(v for k, v in split.items() if k != "model") if split else None


def targets(cases: dict) -> list[str]:
    """Issue 27's targets, checked on the largest nightly size and the backfill case of this run."""
    lines = []

    def check(ok, label, text):
        lines.append(f"- {'MET' if ok else 'NOT MET'}: {label}: {text}")

    nights = [k for k in cases if not k.startswith("backfill")]
    if nights:
        night = cases[max(nights, key=int)]
        for mode in ("pipeline_in_memory", "pipeline_in_memory_tf", "pipeline_multi_processing"):
            p = night.get(mode, {})
            if "rows_per_s" not in p:
                continue
            if "x_model_limit" in p:
                check(p["x_model_limit"] >= 0.5, LABELS[mode], f"{p['x_model_limit']:.2f} x model-only limit (>= 0.5)")
            if "rows_per_s" in night.get("stock_beam", {}):
                x = p["rows_per_s"] / night["stock_beam"]["rows_per_s"]
                check(x >= 2, LABELS[mode], f"{x:.2f} x {LABELS['stock_beam']} (>= 2)")
            check(p["peak_rss_tree_gb"] <= 1.5, LABELS[mode], f"peak RSS {p['peak_rss_tree_gb']:.2f} GB (<= 1.5)")
            for base in ("per_row_beam", "pandas_keras"):
                if "rows_per_s" in night.get(base, {}):
                    x = p["rows_per_s"] / night[base]["rows_per_s"]
                    lines.append(f"- info: {LABELS[mode]}: {x:.1f} x {LABELS[base]}")
    for key in (k for k in cases if k.startswith("backfill")):
        for mode in ("pipeline_backfill", "pipeline_backfill_tf"):
            p = cases[key].get(mode, {})
            if "x_model_limit" in p:
                check(p["x_model_limit"] >= 0.7, f"{LABELS[mode]} {key}", f"{p['x_model_limit']:.2f} x limit (>= 0.7)")
            outside = _outside_model(p)
            if outside is not None:
                check(outside <= 2.5, f"{LABELS[mode]} {key}", f"all but the model {outside:.2f} CPU-µs a row (<= 2.5)")
                busy = p["split"]["busy"]
                check(busy >= 0.95, f"{LABELS[mode]} {key}", f"cores {busy * 100:.0f} % busy (>= 95 %)")
            if "peak_rss_tree_gb" in p:
                check(p["peak_rss_tree_gb"] <= 1.5, f"{LABELS[mode]} {key}", f"peak RSS {p['peak_rss_tree_gb']:.2f} GB")
    return lines


def split_table(cases: dict) -> list[str]:
    """CPU-µs a row per stage of every pipeline run that carried a split (its fastest run), one column each."""
    columns = [(key, name, r) for key, results in cases.items() for name, r in results.items() if "split" in r]
    if not columns:
        return []
    stages = list(columns[0][2]["split"]["us_per_row"])
    head = " | ".join(f"{key}: {label(name)}" for key, name, _ in columns)
    out = ["", "CPU-µs a row by stage (`benchmarks/cpu_split.py`, the fastest run of each):", ""]
    out += [f"| stage | {head} |", "|---|" + "---:|" * len(columns)]
    for stage in stages:
        values = (r["split"]["us_per_row"].get(stage, 0) for *_, r in columns)
        out.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    out.append("| **all but the model** | " + " | ".join(f"**{_outside_model(r):.2f}**" for *_, r in columns) + " |")
    out.append("| total | " + " | ".join(f"{sum(r['split']['us_per_row'].values()):.2f}" for *_, r in columns) + " |")
    out.append("| cores busy | " + " | ".join(f"{r['split']['busy'] * 100:.0f} %" for *_, r in columns) + " |")
    return out


def table(run: dict) -> str:
    m = run["machine"]
    out = [
        f"Run {run['started']}: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Beam {m['apache-beam']}, TensorFlow {m['tensorflow-cpu']}, Keras {m['keras']}, pyarrow {m['pyarrow']}, "
        f"numpy {m['numpy']}, pandas {m['pandas']}. Every contender ran {run.get('repeat', 1)} time(s), round-robin; "
        "the fastest run counts (peak RSS: the highest of any run).",
        "",
        "| case (reviews a day) | contender | wall s | CPU s | rows/s | x model limit | peak RSS GB (tree) "
        "| max process RSS GB "
        "| notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size, results in run["cases"].items():
        size = f"{int(size):,}" if size.isdigit() else size
        for name, r in results.items():
            if "error" in r:
                out.append(f"| {size} | {label(name)} | {r['wall_s']} | | failed | | | | {r['error']} |")
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
            if len(r.get("cpu_repetitions", [])) > 1:
                notes += f"; CPU s {', '.join(str(x) for x in r['cpu_repetitions'])}"
            if "loads" in r:
                notes += f"{'; ' if notes else ''}load {', '.join(f'{x:.1f}' for x in r['loads'])}"
            out.append(
                f"| {size} | {label(name)} | {r['wall_s']} | {r.get('cpu_s', '')} | {r.get('rows_per_s', 0):,} "
                f"| {r.get('x_model_limit', '')} | {r['peak_rss_tree_gb']} | {r['max_process_rss_gb']} | {notes} |"
            )
    out += split_table(run["cases"])
    out += ["", "Targets (issue 27), from this run:", "", *run["targets"]]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000", help="comma-separated review counts of one-day nights")
    parser.add_argument("--backfill", default="5x2000000", help="DAYSxREVIEWS a day for the backfill case, or ''")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    parser.add_argument(
        "--backfill-contenders", default=",".join(BACKFILL_CONTENDERS), help=f"subset of {BACKFILL_CONTENDERS}"
    )
    parser.add_argument(
        "--model-rows", type=int, default=262_144, help="rows the model-only limit is timed on (shapes are fixed)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every contender, round-robin; the fastest run of each counts"
    )
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    parser.add_argument(
        "--baseline",
        default="",
        help="another checkout (with its C extension built): each pipeline contender also runs from it, alternated",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    contenders = [c for c in args.contenders.split(",") if c]
    backfill_contenders = [c for c in args.backfill_contenders.split(",") if c]
    unknown = (set(contenders) - set(CONTENDERS)) | (set(backfill_contenders) - set(BACKFILL_CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")
    os.makedirs(DATA, exist_ok=True)
    ensure_model()
    run = {"started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "repeat": args.repeat}
    run["cases"] = {}
    for size in sizes:
        run["cases"][str(size)] = run_case(str(size), size, 1, contenders, args.model_rows, args.repeat, args.baseline)
    if args.backfill:
        days, per_day = (int(x) for x in args.backfill.split("x"))
        key = f"backfill-{days}x{per_day}"
        run["cases"][key] = run_case(
            key, per_day, days, backfill_contenders, args.model_rows, args.repeat, args.baseline
        )
    run["targets"] = targets(run["cases"])
    with open(RESULTS, "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
    text = table(run)
    print("\n" + text)
    if not args.no_readme:
        write_readme(text, BEGIN, END)
    print(f"\nwrote {RESULTS}" + ("" if args.no_readme else f" and {README}"))


if __name__ == "__main__":
    main()
