"""Trial of an int8 dynamic-range LiteRT conversion of the bundle's model against its float one (issue 27's optional
lead): throughput on 2 interpreters, the largest score difference and the AUC change on labelled sample reviews.
Measures only; the product has no int8 runtime. `python -m benchmarks.int8_trial --data benchmarks/data/reviews-200000`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import MODEL_DIR, customer_files, review_files
from benchmarks.model_only import _with_row_keys
from model.bundle import load_bundle
from model.litert_conversion import convert_to_litert
from model.runtime import LiteRTRuntime
from transforms.broadcast_join import join_customers
from transforms.customer_table import build_customer_table
from transforms.featurize import Featurizer
from transforms.schema import RunSchema
from transforms.validate import check_rows


def labelled_inputs(root: str, bundle, max_rows: int):
    """(numeric, tokens, labels) of the first max_rows valid reviews, with the pipeline's own functions."""
    schema = RunSchema()
    c = schema.columns
    customers = pa.concat_tables(pq.read_table(f, columns=c.customer_columns()) for f in customer_files(root))
    customers = build_customer_table([_with_row_keys(customers)], c, schema.customers_schema())
    reviews = pa.concat_tables(pq.read_table(f, columns=[*c.review_columns(), "label"]) for f in review_files(root))
    joined = join_customers(_with_row_keys(reviews.slice(0, int(max_rows * 1.02) + 100)), customers, c)
    valid, _ = check_rows(joined, schema)
    valid = valid.slice(0, max_rows)
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(valid, c.review_text)
    return numeric, tokens, valid["label"].to_numpy()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positive = labels == 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--max-rows", type=int, default=262_144)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model_dir)
    numeric, tokens, labels = labelled_inputs(args.data, bundle, args.max_rows)
    features, length = numeric.shape[1], tokens.shape[1]
    with open(f"{args.model_dir}/model.tflite", "rb") as f:
        float_content = f.read()
    int8_content = convert_to_litert(bundle.model, features, length, quantize=True)
    runtimes = {"float": LiteRTRuntime(float_content, threads=2), "int8": LiteRTRuntime(int8_content, threads=2)}
    print(
        f"rows {len(numeric)}; flatbuffer MB: float {len(float_content) / 1e6:.2f}, int8 {len(int8_content) / 1e6:.2f}"
    )
    scores, best = {}, {}
    for name, runtime in runtimes.items():
        scores[name] = runtime.predict(numeric, tokens)  # warm both interpreters, and the scores compared below
    for _ in range(args.repeat):  # alternated, the fastest of each counts
        for name, runtime in runtimes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            runtime.predict(numeric, tokens)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"  {name}: {len(numeric) / wall:,.0f} rows/s, {cpu / len(numeric) * 1e6:.2f} CPU-µs a row")
            best[name] = max(best.get(name, 0.0), len(numeric) / wall)
    diff = np.abs(scores["int8"].astype(np.float64) - scores["float"])
    keras = bundle.model.predict([numeric, tokens], batch_size=4096, verbose=0).reshape(-1)
    print(f"best rows/s: float {best['float']:,.0f}, int8 {best['int8']:,.0f} ({best['int8'] / best['float']:.2f} x)")
    print(
        f"int8 vs float litert: max |diff| {diff.max():.4g}, mean {diff.mean():.4g}, p99 {np.quantile(diff, 0.99):.4g}"
    )
    print(f"float litert vs Keras: max |diff| {np.abs(scores['float'] - keras).max():.3g}")
    aucs = {name: auc(s, labels) for name, s in scores.items()}
    print(f"AUC on {len(labels)} labelled rows: float {aucs['float']:.5f}, int8 {aucs['int8']:.5f}")


if __name__ == "__main__":
    main()
