#!/usr/bin/env bash
# Two contenders scoring the same night, alternated (benchmarks/README.md, "The cost of issues 17 and 18"):
#   benchmarks/night_ab.sh DATA MODEL RUNS FRESH  TREE_A "FLAGS_A"  TREE_B "FLAGS_B"
# DATA: a sample-data folder (customers/, reviews/dt=2026-11-28/); MODEL: a bundle; FRESH=1 empties each contender's
# output before every run (0 reruns into it); TREE_*: the checkout each contender imports (PYTHONPATH).
# Prints wall seconds and max RSS per run, from /usr/bin/time. Example (before/after a change):
#   git worktree add /tmp/base 6c47117
#   benchmarks/night_ab.sh /tmp/ab/data data/model 3 1 /tmp/base "" "$PWD" ""
set -euo pipefail
data=$1 model=$2 runs=$3 fresh=$4
python=${PYTHON:-$(pwd)/.venv/bin/python}
work=$(mktemp -d)
run() {
  local name=$1 tree=$2 flags=$3 out="$work/out-$1"
  if [ "$fresh" = 1 ]; then rm -rf "$out" "$out.staging"; fi
  # shellcheck disable=SC2086 # the flags are words
  (cd "$tree" && /usr/bin/time -f "$name wall %e s  maxrss %M KB" env PYTHONPATH="$tree" "$python" -m pipeline score \
    --customers "$data/customers" --reviews "$data/reviews" --model-dir "$model" --output "$out" \
    --date 2026-11-28 --runner=FnApiRunner $flags >"$work/$name.out" 2>"$work/$name.err") || {
    echo "$name failed:"; tail -3 "$work/$name.err"; exit 1; }
  grep "wall" "$work/$name.err"
}
for _ in $(seq "$runs"); do
  run A "$5" "$6"
  run B "$7" "$8"
done
rm -rf "$work"
