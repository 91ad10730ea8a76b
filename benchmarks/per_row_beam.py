"""Contender (c), the per-row Beam baseline: one dict per review, a side-input dict join, a Python tokenizer and
Beam's stock RunInference, written with WriteToParquet; the textbook way to write this job."""

from __future__ import annotations

import argparse
import os
import sys
import time
import unicodedata

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from benchmarks.common import DATE, MODEL_DIR, bundle_artifacts, report

LENGTH = 50
# Unicode punctuation and symbols, removed as the product's tokenizer does.
_STRIP = {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PS"}


class KerasNumpyHandler(ModelHandler):
    """Beam's TFModelHandlerNumpy needs tensorflow_hub, which this venv lacks; this is its default numpy inference
    (stack the batch, call the model) for the two-input model, whose element is [2 numeric | 50 token ids]."""

    def __init__(self, model_path: str):
        self._model_path = model_path

    def load_model(self):
        import keras

        return keras.saving.load_model(self._model_path, safe_mode=True, compile=False)

    def run_inference(self, batch, model, inference_args=None):
        x = np.stack(batch)
        scores = np.asarray(model([x[:, :2], x[:, 2:].astype(np.int32)], training=False)).reshape(-1)
        return [PredictionResult(e, s) for e, s in zip(batch, scores)]


def _tokenize(text: str, vocabulary: dict) -> list[int]:
    words = text.lower().translate(_STRIP).split()[:LENGTH]
    ids = [vocabulary.get(w, 1) for w in words]
    return ids + [0] * (LENGTH - len(ids))


def _join(review, customers):
    features = customers.get(review["customer_id"])
    if features is None or None in features or review["review_text"] is None:
        return
    yield review, features


def _example(pair, vocabulary, mean, std):
    review, features = pair
    numeric = (np.asarray(features) - mean) / std
    row = np.concatenate([numeric, _tokenize(review["review_text"], vocabulary)]).astype(np.float32)
    return (review["review_id"], review["customer_id"]), row


def _record(keyed, version):
    (review_id, customer_id), result = keyed
    return {
        "review_id": review_id,
        "customer_id": customer_id,
        "sentiment_score": float(result.inference),
        "model_version": version,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    words, scaler, version = bundle_artifacts(args.model_dir)
    vocabulary = {w: i + 2 for i, w in enumerate(words)}
    mean, std = np.asarray(scaler["mean"]), np.asarray(scaler["std"])
    schema = pa.schema(
        [
            ("review_id", pa.int64()),
            ("customer_id", pa.int64()),
            ("sentiment_score", pa.float32()),
            ("model_version", pa.string()),
        ]
    )
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        customers = (
            p
            | "ReadCustomers" >> ReadFromParquet(os.path.join(args.data, "customers", "*.parquet"))
            | "CustomerFeatures" >> beam.Map(lambda r: (r["customer_id"], (r["age"], r["purchase_history"])))
        )
        _ = (
            p
            | "ReadReviews"
            >> ReadFromParquet(
                os.path.join(args.data, "reviews", f"dt={DATE}", "*.parquet"),
                columns=["review_id", "customer_id", "review_text"],
            )
            | "JoinCustomers" >> beam.FlatMap(_join, customers=beam.pvalue.AsDict(customers))
            | "Featurize" >> beam.Map(_example, vocabulary, mean, std)
            | "Infer" >> RunInference(KeyedModelHandler(KerasNumpyHandler(os.path.join(args.model_dir, "model.keras"))))
            | "ToRecords" >> beam.Map(_record, version)
            | "WriteScores" >> WriteToParquet(os.path.join(args.output, "scores"), schema, file_name_suffix=".parquet")
        )
    import pyarrow.dataset as ds

    rows_read = ds.dataset(os.path.join(args.data, "reviews", f"dt={DATE}")).count_rows()
    report(rows=rows_read, seconds=round(time.perf_counter() - start, 3))


if __name__ == "__main__":
    main()
