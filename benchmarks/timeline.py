"""Cores in use over a run's wall time: runs a command and samples its CPU (user + system of all its threads, from
/proc/PID/stat) every --every seconds, so the phases where only one core works (imports, the id and customer
stages, TensorFlow's import, the commit) show as runs of ~1.0 between the ~2.0 of the main stage.

    python -m benchmarks.timeline [--every 0.25] [--out FILE] -- .venv/bin/python -m pipeline score ...

Prints one line per sample (seconds since start, cores in use, a bar) and a summary: wall, mean cores, and the
seconds spent below 1.5 cores. The command's own output goes to --out (default: discarded). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (this process's threads; not children)


def sample(command: list[str], every: float, out) -> list[tuple[float, float]]:
    """(seconds since start, cores in use over the interval before) per interval, until the command exits."""
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    start = last_time = time.monotonic()
    last_cpu, samples = 0.0, []
    while process.poll() is None:
        time.sleep(every)
        cpu, now = _cpu_seconds(process.pid), time.monotonic()
        if cpu is None:
            break
        samples.append((now - start, (cpu - last_cpu) / (now - last_time)))
        last_cpu, last_time = cpu, now
    process.wait()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--out", default=os.devnull, help="where the command's output goes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    with open(args.out, "w") as out:
        samples = sample(command, args.every, out)
    for t, cores in samples:
        print(f"{t:7.2f} {cores:4.2f} {'#' * round(cores * 20)}")
    if samples:
        wall = samples[-1][0]
        mean = sum(c for _, c in samples) / len(samples)
        below = sum(args.every for _, c in samples if c < 1.5)
        print(f"wall {wall:.1f} s, {mean:.2f} cores on average, {below:.1f} s below 1.5 cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
