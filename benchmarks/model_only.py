"""Contender (a), the model-only limit: the bundle's model on pre-built arrays, on every runtime the product has.

Variants: Keras `model.predict(batch_size=4096)`; the product's runtimes (`model.runtime`) with fixed 4096-row calls
from one thread and from two threads (the pipeline's setting): `tensorflow` (XLA-compiled call) and `litert`
(one XNNPACK interpreter per thread). The best variant is the model-only limit. Warm-up (tracing, compilation,
interpreter allocation) is not timed: the pipeline pays it once per worker, not per row.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import MODEL_DIR, customer_files, report, review_files
from model.bundle import load_bundle
from transforms.broadcast_join import join_customers
from transforms.customer_table import build_customer_table
from transforms.featurize import Featurizer
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--max-rows", type=int, default=262_144)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--variants", default="keras_predict,tensorflow_1,tensorflow_2,litert_1,litert_2")
    args = parser.parse_args(argv)

    bundle = load_bundle(args.model_dir)
    numeric, tokens = model_inputs(args.data, bundle, args.max_rows)
    n, batch = len(numeric), args.batch_size

    def keras_predict():
        bundle.model.predict([numeric, tokens], batch_size=batch, verbose=0)

    variants = {}
    for name in args.variants.split(","):
        if name == "keras_predict":
            fn = keras_predict
            bundle.model.predict([numeric[:batch], tokens[:batch]], batch_size=batch, verbose=0)
        else:
            runtime, threads = name.rsplit("_", 1)
            if runtime == "tensorflow":  # parity-checked, either
                model = bundle.tensorflow(batch, jit_compile=True, threads=int(threads))
            else:
                model = bundle.litert(int(threads))
            model.predict(numeric[: batch * int(threads)], tokens[: batch * int(threads)])  # warm every thread

            def fn(model=model):
                model.predict(numeric, tokens)

        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        variants[name] = {"seconds": round(seconds, 3), "rows_per_s": round(n / seconds)}
        print(f"{name}: {n} rows in {seconds:.2f}s = {n / seconds:.0f} rows/s", flush=True)
    best = max(variants, key=lambda k: variants[k]["rows_per_s"])
    report(rows=n, seconds=variants[best]["seconds"], best=best, variants=variants)


if __name__ == "__main__":
    main()
