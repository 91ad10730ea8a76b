"""Tests of the sample data writer: layout, schemas, determinism, dirty rows and a learnable sentiment signal."""

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.training.sample_data import write_sample_data

# The contract, spelled out here rather than imported, so a change to the module's schemas fails these tests.
CUSTOMER_SCHEMA = pa.schema([("customer_id", pa.int64()), ("age", pa.float64()), ("purchase_history", pa.float64())])
REVIEW_SCHEMA = pa.schema(
    [
        ("review_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("review_text", pa.string()),
        ("label", pa.int64()),
        ("review_date", pa.string()),
    ]
)
# What the model sees of a review: its first 50 tokens after lowercasing and stripping punctuation.
SEQUENCE_LENGTH = 50


def _files(root) -> list[str]:
    """Every file under root, as sorted paths relative to it."""
    found = []
    for directory, _, names in os.walk(root):
        found.extend(os.path.relpath(os.path.join(directory, name), root) for name in names)
    return sorted(found)


def _read(directory) -> pa.Table:
    """The part files of one directory, in part order, read as plain files (no partition column added)."""
    parts = sorted(name for name in os.listdir(directory) if name.endswith(".parquet"))
    return pa.concat_tables(pq.ParquetFile(os.path.join(directory, name)).read() for name in parts)


def _read_reviews(output) -> pa.Table:
    root = os.path.join(output, "reviews")
    return pa.concat_tables(_read(os.path.join(root, day)) for day in sorted(os.listdir(root)))


def _auc(scores, labels) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted as half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _tokens(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", "", text.lower()).split()[:SEQUENCE_LENGTH]


def _naive_bayes_auc(texts, labels, seed: int = 0) -> float:
    """Held-out AUC of a multinomial naive Bayes on word counts, trained on a random 70% of the rows."""
    labels = np.asarray(labels)
    docs = [_tokens(text) for text in texts]
    order = np.random.default_rng(seed).permutation(len(docs))
    train, test = order[: int(0.7 * len(docs))], order[int(0.7 * len(docs)) :]
    vocabulary = {word: i for i, word in enumerate(sorted({w for i in train for w in docs[i]}))}
    counts = np.zeros((len(docs), len(vocabulary)))
    for row, doc in enumerate(docs):
        for word in doc:
            if word in vocabulary:
                counts[row, vocabulary[word]] += 1
    log_likelihood = []
    for label in (0, 1):
        totals = counts[train][labels[train] == label].sum(axis=0) + 1.0
        log_likelihood.append(np.log(totals / totals.sum()))
    return _auc(counts[test] @ (log_likelihood[1] - log_likelihood[0]), labels[test])


def _usable(reviews: pa.Table, customers: pa.Table) -> dict:
    """The non-dirty reviews' texts and labels, and the reviews' customer features (None where missing)."""
    by_id = {row["customer_id"]: row for row in customers.to_pylist()}
    rows = reviews.to_pylist()
    clean = [r for r in rows if r["customer_id"] in by_id and r["review_text"] and r["review_text"].strip()]
    return {
        "texts": [r["review_text"] for r in clean],
        "labels": np.array([r["label"] for r in clean]),
        "purchase_history": np.array([by_id[r["customer_id"]]["purchase_history"] for r in clean], dtype=float),
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("small"))
    return output, write_sample_data(output, reviews=300, days=3)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """4000 reviews: big enough that every kind of dirty row occurs."""
    output = str(tmp_path_factory.mktemp("medium"))
    write_sample_data(output, reviews=4000)
    return _read_reviews(output), _read(os.path.join(output, "customers"))


@pytest.fixture(scope="module")
def default_size(tmp_path_factory):
    """The default 3000 reviews, the size the signal checks are about."""
    output = str(tmp_path_factory.mktemp("default"))
    write_sample_data(output)
    return _usable(_read_reviews(output), _read(os.path.join(output, "customers")))


def test_layout_is_customers_plus_one_partition_per_day(small):
    output, summary = small
    assert _files(output) == [
        "customers/part-00000.parquet",
        "reviews/dt=2026-11-26/part-00000.parquet",
        "reviews/dt=2026-11-27/part-00000.parquet",
        "reviews/dt=2026-11-28/part-00000.parquet",
    ]
    assert summary == {
        "customers": 60,
        "reviews": 300,
        "days": ["2026-11-26", "2026-11-27", "2026-11-28"],
        "output": output,
    }


def test_schemas_are_exact(small):
    output, _ = small
    for name in _files(output):
        schema = pq.read_schema(os.path.join(output, name)).remove_metadata()
        expected = CUSTOMER_SCHEMA if name.startswith("customers/") else REVIEW_SCHEMA
        assert schema.equals(expected), f"{name}: {schema}"


def test_small_rows_per_file_splits_files_and_row_groups_without_changing_the_data(tmp_path):
    split, whole = str(tmp_path / "split"), str(tmp_path / "whole")
    write_sample_data(split, reviews=300, days=2, customers=120, rows_per_file=40)
    write_sample_data(whole, reviews=300, days=2, customers=120)
    parts = [f"part-{i:05d}.parquet" for i in range(4)]
    assert _files(split) == (
        [f"customers/{p}" for p in parts[:3]]
        + [f"reviews/dt=2026-11-27/{p}" for p in parts]
        + [f"reviews/dt=2026-11-28/{p}" for p in parts]
    )
    for name in _files(split):
        metadata = pq.ParquetFile(os.path.join(split, name)).metadata
        assert metadata.num_rows == (30 if name.endswith("part-00003.parquet") else 40), name
        assert all(metadata.row_group(i).num_rows <= 40 for i in range(metadata.num_row_groups)), name
    assert _read(os.path.join(split, "customers")).equals(_read(os.path.join(whole, "customers")))
    assert _read_reviews(split).equals(_read_reviews(whole))


def test_same_arguments_give_byte_identical_files(tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write_sample_data(first, reviews=500, seed=3)
    write_sample_data(second, reviews=500, seed=3)
    assert _files(first) == _files(second)
    for name in _files(first):
        with open(os.path.join(first, name), "rb") as a, open(os.path.join(second, name), "rb") as b:
            assert a.read() == b.read(), name


def test_different_seeds_give_different_data(tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write_sample_data(first, reviews=500, seed=3)
    write_sample_data(second, reviews=500, seed=4)
    assert _files(first) == _files(second)
    texts = [_read_reviews(output)["review_text"].to_pylist() for output in (first, second)]
    assert sum(a != b for a, b in zip(*texts, strict=True)) > 450
    ages = [_read(os.path.join(output, "customers"))["age"].to_pylist() for output in (first, second)]
    assert ages[0] != ages[1]


def test_counts_dates_and_ids(tmp_path):
    output = str(tmp_path / "out")
    summary = write_sample_data(output, reviews=1001, days=3, end_date="2024-03-01")
    assert summary["days"] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert summary["reviews"] == 1001 and summary["customers"] == 200
    per_day = []
    for day in summary["days"]:
        table = _read(os.path.join(output, "reviews", f"dt={day}"))
        assert set(table["review_date"].to_pylist()) == {day}
        per_day.append(table.num_rows)
    assert per_day == [334, 334, 333]
    reviews = _read_reviews(output)
    ids = reviews["review_id"].to_numpy()
    assert reviews["review_id"].null_count == 0 and len(np.unique(ids)) == 1001
    assert reviews["customer_id"].null_count == 0 and reviews["label"].null_count == 0
    customers = _read(os.path.join(output, "customers"))
    assert customers.num_rows == 200 and len(np.unique(customers["customer_id"].to_numpy())) == 200


def test_explicit_customer_count_is_honoured(tmp_path):
    summary = write_sample_data(str(tmp_path), reviews=100, days=1, customers=77)
    customers = _read(os.path.join(tmp_path, "customers"))
    assert summary["customers"] == 77 and customers.num_rows == 77
    assert customers["customer_id"].null_count == 0


def test_customer_features_look_real(medium):
    _, customers = medium
    age = customers["age"].drop_null().to_numpy()
    spend = customers["purchase_history"].drop_null().to_numpy()
    assert age.min() >= 18 and age.max() <= 85 and np.all(age == np.round(age))
    assert 35 < np.median(age) < 65
    assert spend.min() >= 0 and 50 < np.median(spend) < 500 and spend.max() > 5 * np.median(spend)


def test_dirty_rows_of_every_kind_at_moderate_size(medium):
    reviews, customers = medium
    known = set(customers["customer_id"].to_pylist())
    texts = reviews["review_text"].to_pylist()
    missing_customer = sum(c not in known for c in reviews["customer_id"].to_pylist())
    null_text = sum(t is None for t in texts)
    blank_text = sum(t is not None and not t.strip() for t in texts)
    null_features = customers.filter(pc.or_(customers["age"].is_null(), customers["purchase_history"].is_null()))
    # About 0.5%, 0.3% and 0.1% of 4000 reviews, and 0.2% of 800 customers.
    assert 10 <= missing_customer <= 30
    assert 6 <= null_text <= 18
    assert 2 <= blank_text <= 8
    assert 1 <= null_features.num_rows <= 8
    assert customers["age"].null_count >= 1 and customers["purchase_history"].null_count >= 1
    assert set(null_features["customer_id"].to_pylist()) & set(reviews["customer_id"].to_pylist())
    # Nulls are real nulls, never NaN, and the keys and labels are never null.
    assert not np.isnan(customers["age"].drop_null().to_numpy()).any()
    assert not np.isnan(customers["purchase_history"].drop_null().to_numpy()).any()
    assert reviews["review_id"].null_count == 0 and reviews["label"].null_count == 0


def test_every_dirty_kind_occurs_from_500_reviews(tmp_path):
    write_sample_data(str(tmp_path), reviews=600, days=2)
    reviews = _read_reviews(str(tmp_path))
    customers = _read(os.path.join(tmp_path, "customers"))
    known = set(customers["customer_id"].to_pylist())
    texts = reviews["review_text"].to_pylist()
    assert any(c not in known for c in reviews["customer_id"].to_pylist())
    assert any(t is None for t in texts) and any(t is not None and not t.strip() for t in texts)
    assert customers["age"].null_count >= 1 and customers["purchase_history"].null_count >= 1


def test_tiny_datasets_have_no_dirty_rows(tmp_path):
    summary = write_sample_data(str(tmp_path), reviews=60, days=2)
    reviews = _read_reviews(str(tmp_path))
    known = set(_read(os.path.join(tmp_path, "customers"))["customer_id"].to_pylist())
    assert summary["customers"] == 50
    assert all(c in known for c in reviews["customer_id"].to_pylist())
    assert all(t and t.strip() for t in reviews["review_text"].to_pylist())
    customers = _read(os.path.join(tmp_path, "customers"))
    assert customers["age"].null_count == 0 and customers["purchase_history"].null_count == 0


def test_text_length_and_style(default_size):
    texts = default_size["texts"]
    words = np.array([len(text.split()) for text in texts])
    assert words.min() >= 10 and words.max() <= 120
    assert words.min() <= 15 and words.max() >= 100, "the length range should be used, not just its middle"
    assert len(set(texts)) > 0.97 * len(texts)

    def share(pattern):
        return np.mean([re.search(pattern, text) is not None for text in texts])

    assert share(r"!!") > 0.05 and share(r"\?") > 0.05 and share(r"\w'\w") > 0.3 and share(",") > 0.5
    assert share(r"[A-Z]") > 0.8 and share(r"^[^A-Z]*$") > 0.02, "mostly mixed case, some all lowercase"
    assert share(r"[éèçñüöïã]") > 0.1, "accented words"
    assert share(r"[\U0001F300-\U0001FAFF]") > 0.05, "emoji"
    assert 0 < share(r"[\u3040-\u30ff\u4e00-\u9fff]") < 0.3, "occasional CJK"


def test_labels_have_both_classes_leaning_positive(default_size):
    labels = default_size["labels"]
    assert set(labels.tolist()) == {0, 1}
    assert 0.5 < labels.mean() < 0.8


def test_bag_of_words_on_the_first_50_tokens_separates_the_classes(default_size):
    assert _naive_bayes_auc(default_size["texts"], default_size["labels"]) >= 0.9


def test_shuffled_labels_give_no_signal(default_size):
    labels = np.random.default_rng(1).permutation(default_size["labels"])
    assert abs(_naive_bayes_auc(default_size["texts"], labels) - 0.5) < 0.1


def test_negation_flips_the_meaning_of_a_word(default_size):
    labels = default_size["labels"]
    lowered = [text.lower() for text in default_size["texts"]]

    def positive_share(phrase):
        rows = [i for i, text in enumerate(lowered) if phrase in text]
        assert len(rows) >= 20, phrase
        return labels[rows].mean()

    assert positive_share("not bad") > 0.8 and positive_share("terrible") < 0.2
    assert positive_share("not good") < 0.2 and positive_share("i love this") > 0.8
    assert positive_share("don't love it") < 0.2
    assert positive_share("wouldn't return it") > 0.8 and positive_share("wouldn't buy it again") < 0.2


def test_purchase_history_is_weakly_informative(default_size):
    spend, labels = default_size["purchase_history"], default_size["labels"]
    known = ~np.isnan(spend)
    assert 0.53 < _auc(spend[known], labels[known]) < 0.75


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reviews": 0}, r"reviews must be >= 1, got 0"),
        ({"reviews": -5}, r"reviews must be >= 1, got -5"),
        ({"days": 0}, r"days must be >= 1, got 0"),
        ({"customers": 0}, r"customers must be >= 1, got 0"),
        ({"rows_per_file": 0}, r"rows_per_file must be >= 1"),
        ({"seed": -1}, r"seed must be >= 0"),
        ({"reviews": 2, "days": 3}, r"reviews \(2\) must be >= days \(3\)"),
        ({"end_date": "2026-13-01"}, r"not a valid date"),
        ({"end_date": "20261128"}, r"YYYY-MM-DD"),
        ({"end_date": "0001-01-02", "days": 5}, r"not a valid date range"),
    ],
)
def test_invalid_arguments_raise_value_error_and_write_nothing(tmp_path, kwargs, message):
    output = str(tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        write_sample_data(output, **kwargs)
    assert not os.path.exists(output)


@pytest.mark.parametrize("kwargs", [{"reviews": 2.5}, {"reviews": "100"}, {"days": True}, {"customers": 3.0}])
def test_non_integer_counts_raise_type_error(tmp_path, kwargs):
    with pytest.raises(TypeError, match="must be an integer"):
        write_sample_data(str(tmp_path / "out"), **kwargs)


def test_remote_output_is_refused(tmp_path):
    with pytest.raises(ValueError, match="local path"):
        write_sample_data("gs://bucket/sample")


def test_refuses_to_write_over_earlier_data(tmp_path):
    write_sample_data(str(tmp_path), reviews=50, days=1)
    with pytest.raises(FileExistsError, match="already has files"):
        write_sample_data(str(tmp_path), reviews=50, days=1)


def test_writes_into_existing_empty_directories(tmp_path):
    os.makedirs(tmp_path / "customers")
    os.makedirs(tmp_path / "reviews")
    summary = write_sample_data(str(tmp_path), reviews=50, days=1)
    assert summary["reviews"] == _read_reviews(str(tmp_path)).num_rows == 50
