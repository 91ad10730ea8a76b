"""Featurizing with the bundle's artifacts and scoring with the compiled and uncompiled model."""

import numpy as np
import pyarrow as pa
import pytest

from model.runtime import TensorflowRuntime as ModelScorer
from transforms.featurize import Featurizer
from transforms.isolation import MAX_FAILED_CALLS, PROBES, isolate_failures, score_with_isolation

TEXTS = [
    "Best tent I've ever owned!! Really happy with it.",
    "Customer service was useless, no refund. Very disappointed, wouldn't buy it again.",
    "not good",
    "café très bien 😀",
]


@pytest.fixture(scope="module")
def arrays(bundle):
    table = pa.table(
        {
            "review_text": TEXTS * 50,
            "age": [25.0, 40.0, 61.0, 33.0] * 50,
            "purchase_history": [10.0, 500.0, 75.5, 0.0] * 50,
        }
    )
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(table, "review_text")
    return numeric, tokens


def test_featurizer_uses_the_bundle_vocabulary_and_scaler(bundle, arrays):
    numeric, tokens = arrays
    assert numeric.shape == (200, 2) and numeric.dtype == np.float32
    assert tokens.shape == (200, 50) and tokens.dtype == np.int32
    mean, std = np.array(bundle.scaler["mean"]), np.array(bundle.scaler["std"])
    np.testing.assert_allclose(numeric[0], (np.array([25.0, 10.0]) - mean) / std, rtol=1e-6)
    best = bundle.vocabulary.index("best") + 2
    assert tokens[0, 0] == best


@pytest.mark.parametrize("batch_size", [64, 4096])
def test_compiled_scores_match_keras_predict(bundle, arrays, batch_size):
    numeric, tokens = arrays
    expected = bundle.model.predict([numeric, tokens], verbose=0).reshape(-1)
    compiled = ModelScorer(bundle.model, batch_size=batch_size, jit_compile=True).predict(numeric, tokens)
    np.testing.assert_allclose(compiled, expected, atol=1e-5, rtol=0)
    assert compiled.dtype == np.float32 and ((compiled >= 0) & (compiled <= 1)).all()


def test_padding_rows_never_leak_into_scores(bundle, arrays):
    numeric, tokens = arrays
    scorer = ModelScorer(bundle.model, batch_size=64, jit_compile=False)
    alone = scorer.predict(numeric[:3], tokens[:3])
    among = scorer.predict(numeric[:67], tokens[:67])[:3]
    np.testing.assert_allclose(alone, among, atol=1e-6)
    assert len(scorer.predict(numeric[:0], tokens[:0])) == 0


def test_scores_rank_positive_text_above_negative_text(bundle, arrays):
    numeric, tokens = arrays
    scores = ModelScorer(bundle.model, jit_compile=False).predict(numeric[:2], tokens[:2])
    assert scores[0] > scores[1]


def test_isolation_without_failures_scores_everything(bundle, arrays):
    numeric, tokens = arrays
    scorer = ModelScorer(bundle.model, batch_size=64, jit_compile=False)
    scores, failed, error, systemic = score_with_isolation(scorer.predict, numeric, tokens)
    assert not failed.any() and error is None and not systemic
    np.testing.assert_allclose(scores, scorer.predict(numeric, tokens), atol=1e-6)


class _FailsOn:
    """A call over row ranges that fails when the range holds one of the given rows; counts its calls."""

    def __init__(self, bad_rows):
        self.bad = np.zeros(0, dtype=np.int64) if bad_rows is None else np.asarray(bad_rows)
        self.calls = 0

    def __call__(self, start, stop):
        self.calls += 1
        if np.any((self.bad >= start) & (self.bad < stop)):
            raise ValueError(f"bad row in [{start}, {stop})")
        return stop - start


def test_isolation_finds_a_failing_row_at_the_start_without_calling_it_systemic():
    call = _FailsOn([0])
    found = isolate_failures(call, 4096)
    assert np.flatnonzero(found.failed).tolist() == [0]
    assert not found.systemic and found.first_error.startswith("ValueError")
    assert sum(r[1] - r[0] for r in found.results) == 4095
    assert call.calls <= 2 * 13 + 2  # one failing and one working call per halving, and one working probe


def test_isolation_gives_up_fast_when_every_call_fails():
    call = _FailsOn(np.arange(16384))
    found = isolate_failures(call, 16384)
    assert found.systemic and found.failed.all() and not found.results
    assert call.calls == 1 + PROBES  # not the ~2n calls a full bisection would make


def test_isolation_budget_rejects_what_it_could_not_isolate():
    bad = np.arange(0, 16384, 97)  # 169 failing rows spread over the table: more than the budget can isolate
    call = _FailsOn(bad)
    found = isolate_failures(call, 16384)
    assert not found.systemic
    assert found.failed_calls == MAX_FAILED_CALLS
    assert found.failed[bad].all()  # every failing row is rejected, isolated or not
    scored = sum(r[1] - r[0] for r in found.results)
    assert scored + int(found.failed.sum()) == 16384 and scored > 0


def test_each_runtime_has_its_own_handler_with_beams_batching_and_sharing_settings(bundle_dir):
    from transforms.inference import LiteRTModelHandler, TensorflowModelHandler
    from transforms.schema import RunSchema

    litert = LiteRTModelHandler(str(bundle_dir), RunSchema(), threads=1)
    tensorflow = TensorflowModelHandler(str(bundle_dir), RunSchema(), 64, False, 1, share_across_processes=True)
    # One table per model call: the read already batched the rows; Beam takes the batch sizes through __init__.
    assert (
        litert.batch_elements_kwargs()
        == tensorflow.batch_elements_kwargs()
        == {"min_batch_size": 1, "max_batch_size": 1}
    )
    assert (litert.share_model_across_processes(), tensorflow.share_model_across_processes()) == (False, True)
    assert (litert.model_copies(), tensorflow.model_copies()) == (1, 1)
    assert (litert.get_metrics_namespace(), tensorflow.get_metrics_namespace()) == (
        "sentiment_litert",
        "sentiment_tensorflow",
    )


def test_each_handler_loads_its_runtime_stamped_with_the_bundle_version(bundle_dir, bundle):
    from transforms.inference import LiteRTModelHandler, TensorflowModelHandler
    from transforms.schema import RunSchema

    litert = LiteRTModelHandler(str(bundle_dir), RunSchema(), threads=1).load_model()
    tensorflow = TensorflowModelHandler(str(bundle_dir), RunSchema(), 64, False, 1).load_model()
    assert (litert.name, tensorflow.name) == ("litert", "tensorflow")
    assert litert.version() == tensorflow.version() == bundle.model_version
    assert tensorflow.batch_size == 64 and litert.batch_size == 4096  # litert's is the bundle's conversion


def test_a_handler_for_a_bundle_replaced_after_planning_refuses_to_load(bundle_dir):
    from model.bundle import BundleError
    from transforms.inference import LiteRTModelHandler
    from transforms.pinned import PinnedBundle
    from transforms.schema import RunSchema

    handler = LiteRTModelHandler(PinnedBundle(str(bundle_dir), "sha256-0000000000000000"), RunSchema(), threads=1)
    with pytest.raises(BundleError, match=r"is not the sha256-0000000000000000 this run was planned with"):
        handler.load_model()


def _featurized_table(bundle, first: int, n: int) -> pa.Table:
    from transforms.featurize import NUMERIC, TOKENS, matrix_column

    table = pa.table(
        {
            "review_id": pa.array(range(first, first + n), pa.int64()),
            "customer_id": pa.array([7] * n, pa.int64()),
            "review_text": (TEXTS * n)[:n],
            "age": [30.0 + first % 7] * n,
            "purchase_history": [12.5] * n,
        }
    )
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(table, "review_text")
    return table.append_column(NUMERIC, matrix_column(numeric)).append_column(TOKENS, matrix_column(tokens))


def _score_tables(bundle_dir, elements):
    """ScoreTables (litert, 2 threads) driven over (partition, table) elements as a runner does; the ScoredTables
    it emits and how many came out of process() rather than finish_bundle."""
    from apache_beam.transforms.window import GlobalWindow

    from transforms.inference import LiteRTModelHandler, ScoreTables
    from transforms.schema import RunSchema

    dofn = ScoreTables(LiteRTModelHandler(str(bundle_dir), RunSchema(), threads=1), threads=2)
    dofn.setup()
    try:
        dofn.start_bundle()
        out = []
        for element in elements:
            out += list(dofn.process(element, timestamp=0, window=GlobalWindow()))
        from_process = len(out)
        out += [windowed.value for windowed in dofn.finish_bundle()]
    finally:
        dofn.teardown()
    return out, from_process


def test_score_tables_scores_whole_model_calls_on_background_threads_in_input_order(bundle_dir, bundle):
    from transforms.inference import LiteRTModelHandler
    from transforms.schema import RunSchema

    sizes = [5, 300, 1, 4100, 17, 8200, 4096]
    tables = [_featurized_table(bundle, 10_000 * i, n) for i, n in enumerate(sizes)]
    out, from_process = _score_tables(bundle_dir, [("2026-11-28", t) for t in tables])
    ids = [i for r in out for i in r.scores["review_id"].to_pylist()]
    assert ids == [i for t in tables for i in t["review_id"].to_pylist()]  # every row once, in input order
    # Each call but the bundle's last scores whole 4096-row model calls: the rows short of one wait for the next
    # table, not padded (5 + 300 + 1 + 4100 -> 4096 with 310 waiting, ...: 16,719 rows in 4 whole calls + 335).
    assert [r.scores.num_rows for r in out] == [4096, 8192, 4096, 335]
    assert from_process == 1  # at most `threads` tables wait; the rest come out of finish_bundle
    # The same scores as the handler's own call on all the rows at once (the same call boundaries).
    handler = LiteRTModelHandler(str(bundle_dir), RunSchema(), threads=1)
    direct = handler.run_inference([("2026-11-28", pa.concat_tables(tables))], handler.load_model())[0]
    assert pa.concat_tables([r.scores for r in out]).equals(direct.scores)


def test_score_tables_never_carries_rows_into_another_partitions_call(bundle_dir, bundle):
    """The twin: rows waiting for a whole call wait for their own partition's next table, never another's."""
    elements = [(day, _featurized_table(bundle, 10_000 * i, 3000)) for i, day in enumerate(["a", "b", "a", "b", "a"])]
    out, _ = _score_tables(bundle_dir, elements)
    for r in out:
        expected = {i for day, t in elements if day == r.partition for i in t["review_id"].to_pylist()}
        assert set(r.scores["review_id"].to_pylist()) <= expected
    # a: 3000 + 3000 -> 4096 with 1904 waiting, + 3000 -> 4096 with 808 left; b: 3000 + 3000 -> 4096, 1904 left.
    assert sorted((r.partition, r.scores.num_rows) for r in out) == [
        ("a", 808),
        ("a", 4096),
        ("a", 4096),
        ("b", 1904),
        ("b", 4096),
    ]
