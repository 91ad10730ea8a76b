"""Contender (d), a single-process pandas + Keras script: read, merge, TextVectorization, predict, write."""

from __future__ import annotations

import argparse
import os
import time

import keras
import numpy as np
import pandas as pd

from benchmarks.common import DATE, MODEL_DIR, bundle_artifacts, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = keras.saving.load_model(os.path.join(args.model_dir, "model.keras"), safe_mode=True, compile=False)
    vocabulary, scaler, version = bundle_artifacts(args.model_dir)

    reviews = pd.read_parquet(
        os.path.join(args.data, "reviews", f"dt={DATE}"), columns=["review_id", "customer_id", "review_text"]
    )
    customers = pd.read_parquet(os.path.join(args.data, "customers"))
    customers = customers.drop_duplicates("customer_id")
    df = reviews.merge(customers, on="customer_id", how="inner")
    df = df.dropna(subset=["review_text", "age", "purchase_history"])

    # With a fixed vocabulary, index 0 is padding and 1 is out-of-vocabulary, as in the product's bundle.
    vectorize = keras.layers.TextVectorization(
        standardize="lower_and_strip_punctuation", split="whitespace", output_sequence_length=50, vocabulary=vocabulary
    )
    tokens = np.asarray(vectorize(df["review_text"].to_numpy())).astype(np.int32)
    numeric = ((df[scaler["feature_names"]].to_numpy() - scaler["mean"]) / scaler["std"]).astype(np.float32)
    scores = model.predict([numeric, tokens], batch_size=4096, verbose=0).reshape(-1)

    out = df[["review_id", "customer_id"]].assign(sentiment_score=scores.astype(np.float32), model_version=version)
    os.makedirs(args.output, exist_ok=True)
    out.to_parquet(os.path.join(args.output, "scores.parquet"), index=False)
    report(rows=len(reviews), seconds=round(time.perf_counter() - start, 3), scored=len(out))


if __name__ == "__main__":
    main()
