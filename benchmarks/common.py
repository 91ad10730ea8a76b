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


def bundle_artifacts(model_dir: str) -> tuple[list[str], dict, str]:
    """(vocabulary, scaler, model_version) read straight from a bundle's files, as a script outside the product
    would: the baselines use no product code to featurize."""
    with open(os.path.join(model_dir, "vocabulary.txt"), encoding="utf-8") as f:
        vocabulary = f.read().splitlines()
    with open(os.path.join(model_dir, "scaler.json"), encoding="utf-8") as f:
        scaler = json.load(f)
    with open(os.path.join(model_dir, "metadata.json"), encoding="utf-8") as f:
        version = json.load(f).get("model_version", "unknown")
    return vocabulary, scaler, version


def report(**result) -> None:
    """The one line the harness parses from a contender's stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def write_readme(text: str, begin: str, end: str) -> None:
    """Replaces the block between the begin and end markers of benchmarks/README.md with text (or appends it)."""
    readme_path = os.path.join(os.path.dirname(__file__), "README.md")
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    block = f"{begin}\n{text}\n{end}"
    if begin in readme and end in readme:
        head, rest = readme.split(begin, 1)
        readme = head + block + rest.split(end, 1)[1]
    else:
        readme = readme.rstrip("\n") + "\n\n" + block + "\n"
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(readme)
