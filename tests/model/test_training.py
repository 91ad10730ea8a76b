"""Training end to end on tiny sample data: the bundle it writes is complete, deterministic and useful."""

import numpy as np
import pyarrow as pa
import pytest

from model.bundle import load_bundle
from pipeline.training.sample_data import write_sample_data
from pipeline.training.train import load_training_rows, train_bundle
from transforms.featurize import Featurizer
from transforms.schema import Columns, InputError


def _auc(labels, scores):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_trained_bundle_separates_unseen_reviews(bundle, tmp_path):
    write_sample_data(str(tmp_path), reviews=800, days=1, seed=99, end_date="2026-10-01")
    rows, _ = load_training_rows(str(tmp_path / "customers"), str(tmp_path / "reviews"), Columns())
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(rows, "review_text")
    scores = bundle.model.predict([numeric, tokens], verbose=0).reshape(-1)
    assert _auc(rows["label"].to_numpy(), scores) > 0.85
    assert bundle.metadata["metrics"]["val_auc"] > 0.85


def test_bundle_records_training_split_statistics_and_metadata(bundle):
    meta = bundle.metadata
    assert meta["sequence_length"] == 50 and meta["feature_names"] == ["age", "purchase_history"]
    assert meta["vocab_size"] == len(bundle.vocabulary) + 2 <= 10000
    assert meta["metrics"]["train_rows"] > meta["metrics"]["validation_rows"] > 0
    assert bundle.scaler["std"][0] > 0 and 18 <= bundle.scaler["mean"][0] <= 85


@pytest.mark.slow
def test_same_seed_gives_the_same_model_version(tmp_path):
    write_sample_data(str(tmp_path / "d"), reviews=300, days=1, seed=1, end_date="2026-10-01")
    args = (str(tmp_path / "d" / "customers"), str(tmp_path / "d" / "reviews"))
    first, _ = train_bundle(*args, str(tmp_path / "a"), epochs=1, seed=4)
    second, _ = train_bundle(*args, str(tmp_path / "b"), epochs=1, seed=4)
    assert first.model_version == second.model_version
    assert load_bundle(str(tmp_path / "b")).vocabulary == first.vocabulary


def test_too_few_rows_is_refused(tmp_path):
    write_sample_data(str(tmp_path / "d"), reviews=6, days=1, seed=1, end_date="2026-10-01")
    with pytest.raises(InputError, match="too few to train"):
        train_bundle(str(tmp_path / "d" / "customers"), str(tmp_path / "d" / "reviews"), str(tmp_path / "m"))


def test_labels_other_than_zero_and_one_are_refused(tmp_path):
    import pyarrow.parquet as pq

    write_sample_data(str(tmp_path / "d"), reviews=50, days=1, seed=1, end_date="2026-10-01")
    part = next((tmp_path / "d" / "reviews").rglob("*.parquet"))
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array([2] * table.num_rows))
    pq.write_table(table, part)
    with pytest.raises(InputError, match="must hold 0 or 1"):
        load_training_rows(str(tmp_path / "d" / "customers"), str(tmp_path / "d" / "reviews"), Columns())
