"""Contender (a), the model-only limit: the bundle's model on pre-built arrays, Keras predict and a compiled call."""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import MODEL_DIR, customer_files, report, review_files
from model.bundle import load_bundle
from transforms.inference import Featurizer, ModelScorer
from transforms.join import build_customer_table, join_customers
from transforms.schema import FILE_INDEX, ROW_INDEX, RunSchema
from transforms.validate import check_rows


def _with_row_keys(table: pa.Table) -> pa.Table:
    n = table.num_rows
    table = table.append_column(FILE_INDEX, pa.array(np.zeros(n, dtype=np.int32)))
    return table.append_column(ROW_INDEX, pa.array(np.arange(n, dtype=np.int64)))


def model_inputs(root: str, bundle, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs for the first max_rows valid reviews, built with the pipeline's own functions."""
    schema = RunSchema()
    c = schema.columns
    customers = pa.concat_tables(pq.read_table(f, columns=c.customer_columns()) for f in customer_files(root))
    customers = build_customer_table([_with_row_keys(customers)], c, schema.customers_schema())
    reviews = pa.concat_tables(pq.read_table(f, columns=c.review_columns()) for f in review_files(root))
    joined = join_customers(_with_row_keys(reviews.slice(0, int(max_rows * 1.02) + 100)), customers, c)
    valid, _ = check_rows(joined, schema)
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(valid.slice(0, max_rows), c.review_text)
    return numeric, tokens


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--max-rows", type=int, default=262_144)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)

    bundle = load_bundle(args.model_dir)
    numeric, tokens = model_inputs(args.data, bundle, args.max_rows)
    n, batch = len(numeric), args.batch_size
    model = bundle.model
    scorer = ModelScorer(model, batch_size=batch, jit_compile=True)

    def keras_predict():
        model.predict([numeric, tokens], batch_size=batch, verbose=0)

    def compiled():
        scorer.predict(numeric, tokens)

    def compiled_two_threads():
        # Two concurrent compiled calls on alternate batches: TF releases the GIL, so both cores stay busy.
        starts = list(range(0, n, batch))

        def run(part):
            for s in part:
                scorer.predict(numeric[s : s + batch], tokens[s : s + batch])

        threads = [threading.Thread(target=run, args=(starts[k::2],)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # Warm-up (tracing, XLA compilation) is not timed: the pipeline pays it once per worker, not per row.
    model.predict([numeric[:batch], tokens[:batch]], batch_size=batch, verbose=0)
    scorer.predict(numeric[:batch], tokens[:batch])
    variants = {}
    for name, fn in (
        ("keras_predict", keras_predict),
        ("compiled", compiled),
        ("compiled_2_threads", compiled_two_threads),
    ):
        seconds = _timed(fn)
        variants[name] = {"seconds": round(seconds, 3), "rows_per_s": round(n / seconds)}
        print(f"{name}: {n} rows in {seconds:.2f}s = {n / seconds:.0f} rows/s", flush=True)
    best = max(variants, key=lambda k: variants[k]["rows_per_s"])
    report(rows=n, seconds=variants[best]["seconds"], best=best, variants=variants)


if __name__ == "__main__":
    main()
