"""What the benchmark contenders share: where the cached data lives and how a contender reports its result."""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
WORK = os.path.join(HERE, "work")
MODEL_DIR = os.path.join(DATA, "model")
DATE = "2026-11-28"
RESULT_PREFIX = "BENCH-RESULT "


def data_dir(reviews: int) -> str:
    return os.path.join(DATA, f"reviews-{reviews}")


def review_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "reviews", f"dt={DATE}", "*.parquet")))


def customer_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "customers", "*.parquet")))


def report(**result) -> None:
    """The one line the harness parses from a contender's stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
