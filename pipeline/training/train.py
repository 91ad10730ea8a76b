"""`sentiment-score train`: labelled Parquet in, model bundle out, with the scoring code's own featurization."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model.architecture import ModelSpec
from model.bundle import ModelBundle, save_bundle
from model.training import fit_model
from transforms.broadcast_join import join_customers
from transforms.customer_table import build_customer_table
from transforms.featurize import Featurizer
from transforms.io import resolve_files
from transforms.numeric import Scaler
from transforms.schema import FILE_INDEX, ROW_INDEX, Columns, InputError, RunSchema, id_kind, text_kind
from transforms.text import TokenizerSpec, build_vocabulary
from transforms.validate import check_rows

_LOG = logging.getLogger(__name__)


def _read(pattern: str, columns: list[str], what: str) -> pa.Table:
    paths = resolve_files(pattern)
    if not paths:
        raise InputError(f"{pattern}: no {what} files match")
    tables = []
    for i, path in enumerate(paths):
        with FileSystems.open(path) as f:
            try:
                table = pq.read_table(f, columns=columns)
            except Exception as e:
                raise InputError(f"{path}: cannot read columns {columns}: {' '.join(str(e).split())[:200]}") from None
        n = table.num_rows
        table = table.append_column(FILE_INDEX, pa.array(np.full(n, i, dtype=np.int32)))
        tables.append(table.append_column(ROW_INDEX, pa.array(np.arange(n, dtype=np.int64))))
    return pa.concat_tables(tables, promote_options="permissive")


def load_training_rows(customers: str, reviews: str, columns: Columns) -> tuple[pa.Table, dict]:
    """Labelled rows that pass the scoring validation, joined to their customers."""
    customer_table = _read(customers, columns.customer_columns(), "customer")
    review_table = _read(reviews, [*columns.review_columns(), columns.label], "review")
    schema = RunSchema(
        columns=columns,
        review_id_kind=id_kind(review_table.schema.field(columns.review_id).type) or "string",
        customer_id_kind=id_kind(customer_table.schema.field(columns.customer_id).type) or "string",
        text_kind=text_kind(review_table.schema.field(columns.review_text).type) or "string",
    )
    for name in columns.features:
        customer_table = customer_table.set_column(
            customer_table.schema.get_field_index(name), name, customer_table[name].cast(pa.float64())
        )
    table = build_customer_table([customer_table], columns, customer_table.schema)
    joined = join_customers(review_table, table, columns)
    valid, rejects = check_rows(joined, schema)
    labelled = valid.filter(pc.is_valid(valid[columns.label]))
    labels = labelled[columns.label].cast(pa.int64()).to_numpy(zero_copy_only=False)
    if not np.isin(labels, [0, 1]).all():
        raise InputError(f"{reviews}: column {columns.label!r} must hold 0 or 1")
    counts = {"rows": review_table.num_rows, "usable": labelled.num_rows, "rejected": rejects.num_rows}
    return labelled, counts


def train_bundle(
    customers: str,
    reviews: str,
    model_dir: str,
    epochs: int = 10,
    seed: int = 7,
    validation_fraction: float = 0.2,
    columns: Columns | None = None,
    spec: ModelSpec | None = None,
    batch_size: int = 64,
) -> tuple[ModelBundle, dict]:
    """Builds vocabulary and scaler on the training split only, fits, and writes the bundle."""
    columns = columns or Columns()
    spec = spec or ModelSpec(numeric_features=len(columns.features))
    rows, counts = load_training_rows(customers, reviews, columns)
    n = rows.num_rows
    n_val = int(round(n * validation_fraction))
    if n < 10 or n_val < 2 or n - n_val < 2:
        raise InputError(f"{reviews}: {n} usable labelled rows is too few to train and validate on")
    order = np.random.default_rng(seed).permutation(n)
    train_rows, val_rows = rows.take(pa.array(order[n_val:])), rows.take(pa.array(order[:n_val]))

    tokenizer_spec = TokenizerSpec(sequence_length=spec.sequence_length)
    vocabulary = build_vocabulary(train_rows[columns.review_text], max_size=spec.vocab_size)
    scaler = Scaler.fit(train_rows, columns.features)
    featurizer = Featurizer(vocabulary, tokenizer_spec.to_dict(), scaler.to_dict())

    def arrays(table: pa.Table):
        numeric, tokens, _, _ = featurizer.featurize(table, columns.review_text)
        return numeric, tokens, table[columns.label].cast(pa.int64()).to_numpy(zero_copy_only=False)

    model, metrics = fit_model(
        arrays(train_rows), arrays(val_rows), spec, epochs=epochs, seed=seed, batch_size=batch_size
    )
    metrics.update({f"input_{k}": v for k, v in counts.items()})
    _LOG.info("trained on %d rows, validated on %d: val_auc %.4f", n - n_val, n_val, metrics["val_auc"])
    bundle = save_bundle(
        model_dir,
        model,
        vocabulary,
        tokenizer_spec.to_dict(),
        scaler.to_dict(),
        metrics,
        {"model_spec": spec.to_dict(), "seed": seed, "text_feature": columns.review_text},
    )
    return bundle, metrics
