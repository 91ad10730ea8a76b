"""Bad input: every reject reason end to end, every fatal start-up error, hostile configs and bundles, fuzzing."""

from __future__ import annotations

import glob
import operator
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.bundle import BundleError, load_bundle
from model.runtime import TensorflowRuntime as ModelScorer
from pipeline.run.launcher import execute
from tests.conftest import corrupt_first_page_header, partition_summary, run_config
from transforms.broadcast_join import join_customers
from transforms.customer_table import build_customer_table
from transforms.featurize import NUMERIC, TOKENS, Featurizer, matrix_column
from transforms.inference import score_table
from transforms.isolation import MAX_FAILED_CALLS
from transforms.schema import FILE_INDEX, ROW_INDEX, SCORE, Columns, RunSchema, conform
from transforms.validate import INVALID_SCORE, REASONS, check_rows, duplicate_row_keys

DATE = "2026-03-01"
CUSTOMER_SCHEMA = pa.schema([("customer_id", pa.int64()), ("age", pa.float64()), ("purchase_history", pa.float64())])
REVIEW_SCHEMA = pa.schema([("review_id", pa.int64()), ("customer_id", pa.int64()), ("review_text", pa.string())])
NAN, INF = float("nan"), float("inf")
# Scores of the pipeline and of an in-process model call agree to this (XLA or not, batch padding or not).
SCORE_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


FLOAT32_MAX = float(np.finfo(np.float32).max)


def write_parquet(path, rows: list[tuple], schema: pa.Schema, row_group_size: int | None = None) -> str:
    """Writes rows (tuples in schema order) as one Parquet file, creating its folder."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    table = pa.table([pa.array(list(c), f.type) for c, f in zip(columns, schema)], schema=schema)
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def write_good_dataset(root) -> dict:
    """Two customers and three reviews of DATE that score cleanly; returns the config paths."""
    root = str(root)
    write_parquet(f"{root}/customers/part-0.parquet", [(1, 30.0, 100.0), (2, 45.0, 2000.0)], CUSTOMER_SCHEMA)
    write_parquet(
        f"{root}/reviews/dt={DATE}/part-0.parquet",
        [(10, 1, "great product, works well"), (11, 2, "broke after a day"), (12, 1, "fine")],
        REVIEW_SCHEMA,
    )
    return {"customers": f"{root}/customers", "reviews": f"{root}/reviews", "output": f"{root}/out"}


def make_config(customers, reviews, model_dir, output, **settings_):
    # These inputs are mostly bad rows on purpose; the reject ceiling has its own tests (max_reject_fraction).
    paths = {"customers": customers, "reviews": reviews, "output": output}
    return run_config(paths, model_dir, **{"runtime": "litert", "date": DATE, "max_reject_fraction": 1.0, **settings_})


def run(capsys, **settings_) -> tuple[int, list[str]]:
    """Runs one pipeline in process; returns its exit code and the `sentiment-score:` lines it printed on stderr."""
    capsys.readouterr()
    config = make_config(**settings_)
    code = execute(config, [config.date] if config.date else None, [])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("sentiment-score:")]


def run_written(capsys, tmp_path, bundle_dir) -> str:
    """Runs on the customers/ and reviews/ written under tmp_path, expects success; returns the partition's path."""
    code, lines = run(
        capsys,
        customers=str(tmp_path / "customers"),
        reviews=str(tmp_path / "reviews"),
        model_dir=str(bundle_dir),
        output=str(tmp_path / "out"),
    )
    assert code == 0, lines
    return str(tmp_path / "out" / f"dt={DATE}")


def read_parquet_files(pattern: str) -> pa.Table:
    tables = [pq.read_table(p) for p in sorted(glob.glob(pattern))]
    assert tables, f"no files match {pattern}"
    return pa.concat_tables(tables)


def read_summary(partition: str) -> dict:
    return partition_summary(partition)


def predict(bundle, rows: list[tuple[float, float, str]]) -> np.ndarray:
    """The bundle's in-process scores for (age, purchase_history, text) rows: Featurizer + the Keras model."""
    table = pa.table(
        {
            "age": pa.array([r[0] for r in rows], pa.float64()),
            "purchase_history": pa.array([r[1] for r in rows], pa.float64()),
            "review_text": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(table, "review_text")
    return np.asarray(bundle.model([numeric, tokens], training=False)).reshape(-1)


def assert_fatal(code: int, lines: list[str], *names: str) -> None:
    assert code == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("sentiment-score: error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])


def assert_nothing_written(output: str) -> None:
    assert not os.path.exists(output), os.listdir(output)
    assert not glob.glob(f"{output}/**/_SUCCESS", recursive=True)
    assert not os.path.exists(output + ".staging")


# ---------------------------------------------------------------------------------------------------------------------
# Row level: one pipeline run over a dataset holding one row per problem plus good rows.

LONG_TEXT = "great value, works well and i love it. " * 27_000  # 1.05 MB of text in one review
assert len(LONG_TEXT.encode()) > 1_000_000

# customer_id -> (age, purchase_history) the join must use; id 7 is repeated and its first row by (file, row) wins.
CUSTOMERS_A = [
    (1, 30.0, 100.0),
    (2, 45.0, 2000.0),
    (3, None, 50.0),  # null feature
    (4, NAN, 10.0),  # NaN feature
    (5, 50.0, INF),  # +inf feature
    (7, 22.0, 5.0),  # first row of id 7: wins
    (7, 80.0, 9000.0),  # same file, later row: loses
    (None, 40.0, 40.0),  # null customer id: never joined
]
CUSTOMERS_B = [
    (7, 60.0, 12345.0),  # later file, earlier row: loses (files order before rows)
    (8, 33.0, 300.0),
    (6, 70.0, -INF),  # -inf feature
]
CUSTOMER_7_CANDIDATES = [(22.0, 5.0), (80.0, 9000.0), (60.0, 12345.0)]
FEATURES = {1: (30.0, 100.0), 2: (45.0, 2000.0), 7: (22.0, 5.0), 8: (33.0, 300.0)}

REVIEWS_A = [
    (101, 1, "a great product, works well"),
    (102, 2, "terrible, it broke after a day"),
    (103, 3, "ok i guess"),
    (104, 4, "fine"),
    (105, 5, "fine"),
    (106, 99, "who am i"),
    (107, None, "no customer id"),
    (None, 1, "no review id"),
    (109, 1, None),
    (110, 1, ""),
    (111, 1, " \t\n\u3000 "),
    (112, 7, "good value for the money"),
    (113, 8, LONG_TEXT),
    (200, 2, "first copy of review 200"),
    (114, 1, "first copy of review 114"),
    (114, 2, "second copy of review 114, same file"),
]
REVIEWS_B = [
    (200, 1, "second copy of review 200, later file but earlier row"),
    (201, 8, "nice"),
    (202, 6, "fine"),
]
EXPECTED_REJECTS = {
    103: "null_feature",
    104: "non_finite_feature",
    105: "non_finite_feature",
    106: "missing_customer",
    107: "null_customer_id",
    109: "null_text",
    110: "empty_text",
    111: "empty_text",
    202: "non_finite_feature",
}
EXPECTED_SCORED = {  # review_id -> (customer_id, text)
    101: (1, REVIEWS_A[0][2]),
    102: (2, REVIEWS_A[1][2]),
    112: (7, REVIEWS_A[11][2]),
    113: (8, LONG_TEXT),
    200: (2, REVIEWS_A[13][2]),
    114: (1, REVIEWS_A[14][2]),
    201: (8, "nice"),
}


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory, bundle_dir):
    """One pipeline run over the dirty dataset, read in many small tasks and batches; returns its outputs."""
    root = tmp_path_factory.mktemp("dirty")
    write_parquet(root / "customers" / "a.parquet", CUSTOMERS_A, CUSTOMER_SCHEMA, row_group_size=1)
    write_parquet(root / "customers" / "b.parquet", CUSTOMERS_B, CUSTOMER_SCHEMA, row_group_size=1)
    write_parquet(root / "reviews" / f"dt={DATE}" / "a.parquet", REVIEWS_A, REVIEW_SCHEMA, row_group_size=4)
    write_parquet(root / "reviews" / f"dt={DATE}" / "b.parquet", REVIEWS_B, REVIEW_SCHEMA, row_group_size=2)
    config = make_config(
        customers=str(root / "customers"),
        reviews=str(root / "reviews"),
        model_dir=str(bundle_dir),
        output=str(root / "out"),
        rows_per_read_task=1,
        read_batch_size=3,
    )
    assert execute(config, [DATE], []) == 0
    partition = str(root / "out" / f"dt={DATE}")
    return {
        "partition": partition,
        "scores": read_parquet_files(f"{partition}/scores-*.parquet"),
        "rejects": read_parquet_files(f"{partition}/_rejects/rejects-*.parquet"),
        "summary": read_summary(partition),
    }


@pytest.mark.slow
def test_each_bad_row_is_rejected_with_its_reason(dirty_run):
    rejects = dirty_run["rejects"].to_pylist()
    by_id = {}
    for row in rejects:
        by_id.setdefault(row["review_id"], []).append(row)
    assert [r["reason"] for r in by_id.pop(None)] == ["null_review_id"]
    assert [(r["customer_id"], r["reason"]) for r in by_id.pop(200)] == [(1, "duplicate_review_id")]
    assert [(r["customer_id"], r["reason"]) for r in by_id.pop(114)] == [(2, "duplicate_review_id")]
    assert {rid: [r["reason"] for r in rows] for rid, rows in by_id.items()} == {
        rid: [reason] for rid, reason in EXPECTED_REJECTS.items()
    }
    assert all(r["detail"] for r in rejects)
    # Rejects carry the raw input values.
    assert by_id[106][0]["review_text"] == "who am i" and by_id[106][0]["age"] is None
    assert by_id[103][0]["purchase_history"] == 50.0


@pytest.mark.slow
def test_good_rows_are_scored_with_the_models_score(dirty_run, bundle):
    scores = dirty_run["scores"].sort_by("review_id").to_pylist()
    assert [r["review_id"] for r in scores] == sorted(EXPECTED_SCORED)
    assert {r["review_id"]: r["customer_id"] for r in scores} == {k: v[0] for k, v in EXPECTED_SCORED.items()}
    assert {r["model_version"] for r in scores} == {bundle.model_version}
    expected = predict(
        bundle, [(*FEATURES[EXPECTED_SCORED[r["review_id"]][0]], EXPECTED_SCORED[r["review_id"]][1]) for r in scores]
    )
    got = np.array([r["sentiment_score"] for r in scores], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=SCORE_TOLERANCE)
    assert np.all((got >= 0) & (got <= 1))


@pytest.mark.slow
def test_summary_counts_every_row_once(dirty_run):
    summary = dirty_run["summary"]
    read = len(REVIEWS_A) + len(REVIEWS_B)
    assert summary["status"] == "ok"
    assert summary["rows"] == {"read": read, "scored": len(EXPECTED_SCORED), "rejected": read - len(EXPECTED_SCORED)}
    assert summary["rows"]["scored"] == dirty_run["scores"].num_rows
    assert summary["rows"]["rejected"] == dirty_run["rejects"].num_rows
    expected_reasons = {"null_review_id": 1, "duplicate_review_id": 2}
    for reason in EXPECTED_REJECTS.values():
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert summary["rejected_by_reason"] == dict(sorted(expected_reasons.items()))
    assert summary["customers"] == {
        "customers_read": len(CUSTOMERS_A) + len(CUSTOMERS_B),
        "customers_unique": 8,
        "duplicate_customer_ids": 2,
        "null_customer_ids": 1,
    }
    assert os.path.isfile(os.path.join(dirty_run["partition"], "_SUCCESS"))


@pytest.mark.slow
def test_one_megabyte_review_is_scored_not_rejected(dirty_run, bundle):
    row = dirty_run["scores"].filter(pc.equal(dirty_run["scores"]["review_id"], 113)).to_pylist()
    assert len(row) == 1
    expected = predict(bundle, [(*FEATURES[8], LONG_TEXT)])[0]
    assert abs(row[0]["sentiment_score"] - expected) <= SCORE_TOLERANCE


@pytest.mark.slow
def test_duplicate_review_id_keeps_the_first_by_file_then_row(dirty_run):
    scores = {r["review_id"]: r for r in dirty_run["scores"].to_pylist()}
    # 200 is row 13 of a.parquet and row 0 of b.parquet: the file order decides, so a.parquet's copy is scored.
    assert scores[200]["customer_id"] == 2
    # 114 twice in a.parquet: the earlier row is scored.
    assert scores[114]["customer_id"] == 1


@pytest.mark.slow
def test_duplicate_customer_id_uses_the_first_row_by_file_then_row(dirty_run, bundle):
    text = EXPECTED_SCORED[112][1]
    candidates = predict(bundle, [(*features, text) for features in CUSTOMER_7_CANDIDATES])
    # The candidates must be distinguishable, or this test could not fail.
    assert min(abs(candidates[0] - candidates[1]), abs(candidates[0] - candidates[2])) > 100 * SCORE_TOLERANCE
    score = dirty_run["scores"].filter(pc.equal(dirty_run["scores"]["review_id"], 112))["sentiment_score"]
    assert abs(score[0].as_py() - candidates[0]) <= SCORE_TOLERANCE


@pytest.mark.slow
def test_invalid_utf8_in_a_binary_text_column_is_rejected(tmp_path, bundle_dir, capsys):
    write_parquet(tmp_path / "customers" / "a.parquet", [(1, 30.0, 100.0)], CUSTOMER_SCHEMA)
    schema = pa.schema([("review_id", pa.int64()), ("customer_id", pa.int64()), ("review_text", pa.binary())])
    rows = [
        (1, 1, b"great product"),
        (2, 1, b"bad bytes \xff\xfe here"),
        (3, 1, "caf\u00e9 tr\u00e8s bien".encode()),
        (4, 1, None),
        (5, 1, b"  "),
    ]
    write_parquet(tmp_path / "reviews" / f"dt={DATE}" / "a.parquet", rows, schema)
    partition = run_written(capsys, tmp_path, bundle_dir)
    rejects = {r["review_id"]: r for r in read_parquet_files(f"{partition}/_rejects/rejects-*.parquet").to_pylist()}
    assert {k: r["reason"] for k, r in rejects.items()} == {2: "invalid_utf8", 4: "null_text", 5: "empty_text"}
    assert rejects[2]["review_text"] == b"bad bytes \xff\xfe here"  # the raw bytes, kept for inspection
    scores = read_parquet_files(f"{partition}/scores-*.parquet")
    assert sorted(scores["review_id"].to_pylist()) == [1, 3]
    summary = read_summary(partition)
    assert summary["rows"] == {"read": 5, "scored": 2, "rejected": 3}


@pytest.mark.slow
def test_feature_that_overflows_the_models_float32_input_is_non_finite(tmp_path, bundle_dir, capsys):
    write_parquet(tmp_path / "customers" / "a.parquet", [(1, 1e300, 100.0), (2, 30.0, 100.0)], CUSTOMER_SCHEMA)
    write_parquet(
        tmp_path / "reviews" / f"dt={DATE}" / "a.parquet",
        [(1, 1, "great product"), (2, 2, "great product")],
        REVIEW_SCHEMA,
    )
    partition = run_written(capsys, tmp_path, bundle_dir)
    rejects = read_parquet_files(f"{partition}/_rejects/rejects-*.parquet").to_pylist()
    assert [(r["review_id"], r["reason"]) for r in rejects] == [(1, "non_finite_feature")]


# ---------------------------------------------------------------------------------------------------------------------
# Fatal at start-up: exit code 1, one error line naming the problem, nothing written.


def test_missing_model_bundle_directory(tmp_path, capsys):
    paths = write_good_dataset(tmp_path)
    missing = str(tmp_path / "no-such-model")
    code, lines = run(capsys, **paths, model_dir=missing)
    assert_fatal(code, lines, missing, "no such directory")
    assert_nothing_written(paths["output"])


@pytest.fixture
def bundle_copy(tmp_path, bundle_dir):
    copy = tmp_path / "model-copy"
    shutil.copytree(bundle_dir, copy)
    return copy


def test_bundle_without_vocabulary_file(tmp_path, capsys, bundle_copy):
    paths = write_good_dataset(tmp_path)
    os.remove(bundle_copy / "vocabulary.txt")
    code, lines = run(capsys, **paths, model_dir=str(bundle_copy))
    assert_fatal(code, lines, str(bundle_copy), "missing file vocabulary.txt")
    assert_nothing_written(paths["output"])


def test_corrupt_model_file(tmp_path, capsys, bundle_copy):
    paths = write_good_dataset(tmp_path)
    (bundle_copy / "model.keras").write_bytes(b"\x00junk, not a keras archive\xff" * 100)
    code, lines = run(capsys, **paths, model_dir=str(bundle_copy))
    assert_fatal(code, lines, str(bundle_copy), "model.keras")
    assert_nothing_written(paths["output"])


def test_review_file_missing_a_required_column(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    bad = write_parquet(
        tmp_path / "reviews" / f"dt={DATE}" / "part-1.parquet",
        [(20, 1)],
        pa.schema([("review_id", pa.int64()), ("customer_id", pa.int64())]),
    )
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, bad, "missing required column 'review_text'")
    assert_nothing_written(paths["output"])


def test_review_column_of_the_wrong_type(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    bad = write_parquet(
        tmp_path / "reviews" / f"dt={DATE}" / "part-1.parquet",
        [(20, 1, 12345)],
        pa.schema([("review_id", pa.int64()), ("customer_id", pa.int64()), ("review_text", pa.int64())]),
    )
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, bad, "'review_text'", "int64")
    assert_nothing_written(paths["output"])


def test_customer_feature_of_the_wrong_type(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    bad = write_parquet(
        tmp_path / "customers" / "part-1.parquet",
        [(3, "old", 1.0)],
        pa.schema([("customer_id", pa.int64()), ("age", pa.string()), ("purchase_history", pa.float64())]),
    )
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, bad, "'age'")
    assert_nothing_written(paths["output"])


def test_feature_columns_that_differ_from_the_bundles(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir), columns={"features": ["purchase_history", "age"]})
    assert_fatal(code, lines, "'columns.features'", "feature_names")
    assert_nothing_written(paths["output"])


def test_corrupt_file_in_the_review_glob(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    bad = tmp_path / "reviews" / f"dt={DATE}" / "part-1.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet" * 10)
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, str(bad), "not a readable Parquet file")
    assert_nothing_written(paths["output"])


@pytest.mark.slow
def test_corrupt_data_page_in_a_review_file_names_the_file(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    bad = write_parquet(
        tmp_path / "reviews" / f"dt={DATE}" / "part-1.parquet", [(20, 1, "fine"), (21, 2, "ok")], REVIEW_SCHEMA
    )
    corrupt_first_page_header(bad)
    assert pq.ParquetFile(bad).metadata.num_rows == 2  # the footer is intact: only reading the rows fails
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert not glob.glob(f"{paths['output']}/**/_SUCCESS", recursive=True)
    assert not os.path.exists(f"{paths['output']}/dt={DATE}")
    assert_fatal(code, lines, bad)


def test_review_glob_that_matches_nothing(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    paths["reviews"] = str(tmp_path / "empty-root")
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, f"{paths['reviews']}/dt={DATE}", "no review files match")
    assert_nothing_written(paths["output"])


@pytest.mark.slow
def test_review_glob_that_matches_nothing_with_allow_empty(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    paths["reviews"] = str(tmp_path / "empty-root")
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir), allow_empty=True)
    assert code == 0, lines
    partition = f"{paths['output']}/dt={DATE}"
    assert os.path.isfile(f"{partition}/_SUCCESS")
    summary = read_summary(partition)
    assert summary["rows"] == {"read": 0, "scored": 0, "rejected": 0}
    scores = read_parquet_files(f"{partition}/scores-*.parquet")
    rejects = read_parquet_files(f"{partition}/_rejects/rejects-*.parquet")
    assert scores.num_rows == 0 and rejects.num_rows == 0
    assert scores.schema.names == ["review_id", "customer_id", "sentiment_score", "model_version"]
    assert {"review_id", "reason", "detail"} <= set(rejects.schema.names)


def test_output_below_a_regular_file(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    paths["output"] = str(blocker / "scores")
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert_fatal(code, lines, paths["output"], "not writable")
    assert blocker.read_text() == "a file where a folder should be"
    assert not os.path.exists(str(blocker) + ".staging")


def test_output_that_is_a_regular_file(tmp_path, capsys, bundle_dir):
    paths = write_good_dataset(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    paths["output"] = str(blocker)
    code, lines = run(capsys, **paths, model_dir=str(bundle_dir))
    assert code == 1 and len(lines) == 1 and paths["output"] in lines[0], lines
    assert "failed" not in lines[0], lines  # a start-up error, not a failed run
    assert blocker.read_text() == "a file where the output folder should be"
    assert not os.path.exists(str(blocker) + ".staging")


@pytest.mark.slow
def test_cli_unknown_config_key_exits_2_naming_it(tmp_path, bundle_dir):
    paths = write_good_dataset(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"customers: {paths['customers']}\nreviews: {paths['reviews']}\nmodel_dir: {bundle_dir}\n"
        f"output: {paths['output']}\nmodel_dri: /typo\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "score", "--config", str(config), "--date", DATE, "--runner=FnApiRunner"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sentiment-score:")]
    assert len(errors) == 1 and "'model_dri'" in errors[0] and str(config) in errors[0], result.stderr
    assert_nothing_written(paths["output"])


# ---------------------------------------------------------------------------------------------------------------------
# Security


# YAML python tags in a config: tests/pipeline/run/test_config.py::test_python_tags_are_refused_by_safe_load.


def test_model_with_a_lambda_layer_is_refused(tmp_path, bundle_copy, capsys):
    import keras

    marker = tmp_path / "lambda-ran"
    numeric = keras.Input(shape=(2,), dtype="float32", name="numeric_input")
    text = keras.Input(shape=(50,), dtype="int32", name="text_input")
    t = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10000, 4, name="embedding")(text))
    # A lambda with a side effect: the path is a constant in its bytecode, which the .keras file stores.
    touch = eval(f'lambda v: v * 2.0 + float(__import__("os").system("touch {marker}"))')
    x = keras.layers.Lambda(touch, name="double")(numeric)
    out = keras.layers.Dense(1, activation="sigmoid", name="sentiment")(keras.layers.Concatenate()([x, t]))
    keras.Model([numeric, text], out).save(str(bundle_copy / "model.keras"))
    marker.unlink(missing_ok=True)  # building the model traced the lambda; loading must not run it again

    with pytest.raises(BundleError, match="model.keras") as raised:
        load_bundle(str(bundle_copy))
    assert "Lambda" in str(raised.value)
    assert not marker.exists()

    paths = write_good_dataset(tmp_path)
    code, lines = run(capsys, **paths, model_dir=str(bundle_copy))
    assert_fatal(code, lines, str(bundle_copy), "model.keras")
    assert not marker.exists()
    assert_nothing_written(paths["output"])


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzing the pure column functions: join, validate, featurize and score on arbitrary batches.

# Weighted so that most batches mix valid rows with every kind of bad one: repeated branches are drawn more often.
REVIEW_IDS = st.sampled_from([None, *range(20)])
CUSTOMER_IDS = st.sampled_from([None, *range(7)])
USUAL_FEATURE = st.floats(0, 120)
FEATURE_VALUES = st.one_of(
    USUAL_FEATURE,
    USUAL_FEATURE,
    USUAL_FEATURE,
    USUAL_FEATURE,
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),  # huge, tiny, negative, NaN, +-inf
    st.sampled_from([NAN, INF, -INF, 1e300, -1e300, -0.0, -3.5, 1e-300]),
)
WORDS = [
    "great",
    "good",
    "bad",
    "terrible",
    "product",
    "love",
    "broke",
    "not",
    "Don't!!",
    "zzzunknown",
    "\u00e9t\u00e9",
]
SENTENCES = st.lists(st.sampled_from(WORDS), min_size=1, max_size=120).map(" ".join)
TEXTS = st.one_of(
    SENTENCES,
    SENTENCES,
    st.text(max_size=60),  # arbitrary Unicode, control characters included
    st.text(max_size=60),
    st.none(),
    st.text(alphabet=st.characters(categories=("Cc", "Zs", "Zl", "Zp")), max_size=12),  # whitespace and controls
    st.builds(operator.mul, st.text(min_size=1, max_size=10), st.integers(100, 2000)),  # long: up to 20k chars
)
REVIEW_ROW = st.tuples(REVIEW_IDS, CUSTOMER_IDS, TEXTS, st.integers(0, 2))
# Batch sizes drawn uniformly (Hypothesis' own list sizes stay small), the empty batch included.
REVIEW_ROWS = st.integers(0, 40).flatmap(lambda n: st.lists(REVIEW_ROW, min_size=n, max_size=n))
CUSTOMER_ROW = st.tuples(CUSTOMER_IDS, FEATURE_VALUES, FEATURE_VALUES, st.integers(0, 2))
# One row for each of the ids 0-5 (id 6 only by chance, so missing customers stay common), then repeats and null ids.
CUSTOMER_ROWS = st.builds(
    operator.add,
    st.tuples(*[st.tuples(st.just(i), FEATURE_VALUES, FEATURE_VALUES, st.integers(0, 2)) for i in range(6)]).map(list),
    st.lists(CUSTOMER_ROW, max_size=8),
)


def _fuzz_tables(review_rows, customer_rows, string_ids: bool):
    kind = "string" if string_ids else "int"
    schema = RunSchema(columns=Columns(), review_id_kind=kind, customer_id_kind=kind)

    def as_id(value):
        return None if value is None else (f"id-{value}" if string_ids else value)

    reviews = pa.table(
        {
            "review_id": [as_id(r[0]) for r in review_rows],
            "customer_id": [as_id(r[1]) for r in review_rows],
            "review_text": pa.array([r[2] for r in review_rows], pa.string()),
            FILE_INDEX: pa.array([r[3] for r in review_rows], pa.int32()),
            ROW_INDEX: pa.array(range(len(review_rows)), pa.int64()),
        }
    )
    customers = pa.table(
        {
            "customer_id": [as_id(c[0]) for c in customer_rows],
            "age": pa.array([c[1] for c in customer_rows], pa.float64()),
            "purchase_history": pa.array([c[2] for c in customer_rows], pa.float64()),
            FILE_INDEX: pa.array([c[3] for c in customer_rows], pa.int32()),
            ROW_INDEX: pa.array(range(len(customer_rows)), pa.int64()),
        }
    )
    return schema, conform(reviews, schema.reviews_schema()), conform(customers, schema.customers_schema())


def _expected_reasons(review_rows, customer_rows) -> tuple[list[str | None], dict]:
    """A row-by-row oracle: the reason each review must get (None: valid) and each customer id's winning features."""
    first_customer = {}
    for i in sorted(range(len(customer_rows)), key=lambda i: (customer_rows[i][3], i)):
        cid, age, spend, _ = customer_rows[i]
        if cid is not None:
            first_customer.setdefault(cid, (age, spend))
    seen_reviews = set()
    duplicate = {}
    for i, r in sorted(enumerate(review_rows), key=lambda item: (item[1][3], item[0])):
        if r[0] is not None:
            duplicate[i] = r[0] in seen_reviews
            seen_reviews.add(r[0])
    reasons = []
    for i, (rid, cid, text, _) in enumerate(review_rows):
        features = first_customer.get(cid)
        if rid is None:
            reasons.append("null_review_id")
        elif duplicate[i]:
            reasons.append("duplicate_review_id")
        elif cid is None:
            reasons.append("null_customer_id")
        elif features is None:
            reasons.append("missing_customer")
        elif text is None:
            reasons.append("null_text")
        elif text.strip() == "":
            reasons.append("empty_text")
        elif any(v is None for v in features):
            reasons.append("null_feature")
        elif not all(np.isfinite(v) and abs(v) <= FLOAT32_MAX for v in features):
            reasons.append("non_finite_feature")
        else:
            reasons.append(None)
    return reasons, first_customer


@pytest.fixture(scope="module")
def fuzz_scorer(bundle):
    return ModelScorer(bundle.model, batch_size=64, jit_compile=False)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(review_rows=REVIEW_ROWS, customer_rows=CUSTOMER_ROWS, string_ids=st.booleans())
@pytest.mark.slow
def test_fuzzed_batches_are_scored_or_rejected_exactly_once(
    bundle, fuzz_scorer, review_rows, customer_rows, string_ids
):
    schema, reviews, customers = _fuzz_tables(review_rows, customer_rows, string_ids)
    n = reviews.num_rows
    table = build_customer_table([customers], schema.columns, schema.customers_schema())
    joined = join_customers(reviews, table, schema.columns)
    assert joined.num_rows == n
    valid, rejects = check_rows(joined, schema, duplicate_row_keys([reviews], schema.columns))

    expected, first_customer = _expected_reasons(review_rows, customer_rows)
    assert valid.num_rows + rejects.num_rows == n
    assert set(rejects["reason"].to_pylist()) <= set(REASONS)
    assert rejects["reason"].to_pylist() == [r for r in expected if r is not None]
    valid_rows = valid[ROW_INDEX].to_pylist()
    assert valid_rows == [i for i, r in enumerate(expected) if r is None]
    # The join used the winning customer row's features.
    features = list(zip(valid["age"].to_pylist(), valid["purchase_history"].to_pylist()))
    assert features == [first_customer[review_rows[i][1]] for i in valid_rows]

    numeric, tokens, words, oov = Featurizer.from_bundle(bundle).featurize(valid, "review_text")
    assert numeric.shape == (valid.num_rows, 2) and numeric.dtype == np.float32
    assert tokens.shape == (valid.num_rows, 50) and tokens.dtype == np.int32
    assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < bundle.vocab_size)
    assert 0 <= oov <= words

    # The Infer step itself on the featurized rows: every row comes out once, as a score in [0, 1] or a reject
    # (a NaN from an overflowing feature becomes invalid_score), never as a score outside [0, 1].
    featurized = valid.append_column(NUMERIC, matrix_column(numeric)).append_column(TOKENS, matrix_column(tokens))
    result = score_table(fuzz_scorer, "p", featurized, schema, MAX_FAILED_CALLS)
    assert result.failure is None, result.failure
    scored = np.zeros(0, np.float32) if result.scores is None else result.scores[SCORE].to_numpy()
    score_rejects = [] if result.rejects is None else result.rejects["reason"].to_pylist()
    assert set(score_rejects) <= {INVALID_SCORE}  # in-range token ids never make the model fail
    assert np.all(np.isfinite(scored)) and np.all((scored >= 0) & (scored <= 1))
    assert len(scored) + len(score_rejects) + rejects.num_rows == n


def _dictionary_columns(pattern: str) -> set[str]:
    """The columns any file matching the pattern dictionary-encodes in any row group."""
    names = set()
    for path in glob.glob(pattern):
        metadata = pq.ParquetFile(path).metadata
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for c in range(group.num_columns):
                if any("DICTIONARY" in e for e in group.column(c).encodings):
                    names.add(group.column(c).path_in_schema)
    return names


@pytest.mark.slow
def test_published_shards_dictionary_encode_only_the_columns_that_repeat_by_design(dirty_run):
    """Ids, scores, texts and features are written plain (a dictionary of unique values costs write CPU and bytes);
    the model version and reject reasons are dictionary-encoded."""
    partition = dirty_run["partition"]
    assert _dictionary_columns(f"{partition}/scores-*.parquet") == {"model_version"}
    assert _dictionary_columns(f"{partition}/_rejects/rejects-*.parquet") == {"reason", "detail"}
