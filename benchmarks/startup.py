"""Start-up of the sample night (`make run`'s scoring command): wall, CPU and peak RSS per contender, and where it goes.

    python -m benchmarks.startup --repeat 3                     # litert vs tensorflow, alternated, median of 3
    python -m benchmarks.startup --baseline /tmp/base:/tmp/base-model   # plus another checkout's code and bundle
    python -m benchmarks.startup --profile litert               # -X importtime and cProfile of one run

Every run is a fresh subprocess of `python -m pipeline score --config configs/local.yaml --date 2026-11-28` with its
own output folder; contenders alternate, so a load burst hits all of them alike. `uptime` is recorded before and
after: on the shared 2-core host a load above ~2 makes wall times unreliable, CPU seconds much less so.
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import subprocess
import sys
import tempfile

import yaml

from benchmarks.run import run_sampled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = "2026-11-28"


def _command(output: str, runtime: str | None, model_dir: str | None, config: str) -> list[str]:
    # Absolute paths: each contender runs in its own checkout (python -m puts the working directory first on sys.path).
    data = os.path.join(REPO, "data", "sample")
    command = [sys.executable, "-m", "pipeline", "score", "--config", config, "--date", DATE, "--output", output]
    command += ["--customers", os.path.join(data, "customers"), "--reviews", os.path.join(data, "reviews")]
    return command + ["--model-dir", model_dir or os.path.join(REPO, "data", "model")]


def _config_with(runtime: str | None, directory: str) -> str:
    """configs/local.yaml with `runtime:` set (the CLI has no flag for it)."""
    path = os.path.join(directory, f"local-{runtime or 'default'}.yaml")
    with open(os.path.join(REPO, "configs", "local.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}  # a mapping (local.yaml is `{}` now), so parsed, not appended to
    if runtime:
        config["runtime"] = runtime
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def run_measured(command: list[str], env: dict, cwd: str) -> dict:
    """Wall time, CPU seconds (the process and the children it waited for, wait4) and peak RSS of the process tree."""
    with tempfile.TemporaryFile() as out:
        wall, returncode, usage, peak = run_sampled(command, cwd, env, out)
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "cpu": cpu, "peak_rss": peak, "returncode": returncode, "stderr": output}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(contenders: dict[str, dict], repeat: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory(prefix="startup-") as work:
        for i in range(repeat):
            for name, c in contenders.items():
                env = {**os.environ, "PYTHONPATH": c["root"]}
                output = os.path.join(work, f"{name}-{i}")
                command = _command(output, c.get("runtime"), c.get("model_dir"), c["config"])
                run = run_measured(command, env=env, cwd=c["root"])
                if run["returncode"] != 0:
                    raise SystemExit(f"{name}: exit {run['returncode']}: {run['stderr'][-2000:]}")
                results[name].append(run)
                print(
                    f"{name:>12} run {i + 1}: {run['wall']:.2f} s wall, {run['cpu']:.2f} CPU-s, "
                    f"peak RSS {run['peak_rss'] / 1e6:.0f} MB",
                    flush=True,
                )
    return results


def profile(runtime: str, top: int) -> None:
    """Where one run's time goes: the slowest imports (cumulative) and the functions with most cumulative time."""
    with tempfile.TemporaryDirectory(prefix="startup-profile-") as work:
        config = _config_with(runtime, work)
        env = {**os.environ, "PYTHONPATH": REPO}
        command = _command(os.path.join(work, "out"), runtime, None, config)
        imports = subprocess.run(
            [sys.executable, "-X", "importtime", *command[1:]], env=env, cwd=REPO, text=True, capture_output=True
        ).stderr
        rows = []
        for line in imports.splitlines():
            if line.startswith("import time:") and "|" in line and "cumulative" not in line:
                _, cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
                if not name.startswith(" ") and line.split("|")[2].startswith(" ") and name:
                    rows.append((int(cumulative), line.split("|")[2].rstrip()))
        print(f"slowest imports (cumulative s, nesting shown by indentation), runtime {runtime}:")
        for cumulative, name in sorted(rows, reverse=True)[:top]:
            print(f"  {cumulative / 1e6:6.2f}  {name}")
        stats_file = os.path.join(work, "profile.pstats")
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", stats_file, *command[1:]],
            env=env,
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        print(f"\ncumulative time by function (cProfile, main thread), runtime {runtime}:")
        pstats.Stats(stats_file).sort_stats("cumulative").print_stats(top)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runtimes", default="litert,tensorflow")
    parser.add_argument("--baseline", help="ROOT:MODEL_DIR of another checkout (e.g. main) and a bundle it can load")
    parser.add_argument("--profile", metavar="RUNTIME", help="profile one run instead of measuring")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, args.top)
        return
    with tempfile.TemporaryDirectory(prefix="startup-configs-") as configs:
        contenders = {}
        if args.baseline:
            root, model_dir = args.baseline.split(":")
            contenders["baseline"] = {"root": root, "model_dir": model_dir, "config": _config_with(None, configs)}
        for runtime in filter(None, args.runtimes.split(",")):
            contenders[runtime] = {"root": REPO, "runtime": runtime, "config": _config_with(runtime, configs)}
        print("before:", _uptime())
        results = measure(contenders, args.repeat)
        print("after: ", _uptime())
    print(f"\nmedian of {args.repeat}: contender, wall s, CPU s, peak RSS MB (tree)")
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = statistics.median(r["peak_rss"] for r in runs) / 1e6
        print(f"  {name:>12}  {wall:6.2f}  {cpu:6.2f}  {rss:6.0f}")


if __name__ == "__main__":
    main()
