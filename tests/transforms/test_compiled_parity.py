"""The XLA-compiled, fixed-shape model call gives the uncompiled model's scores within 1e-5 on real bundle arrays."""

import numpy as np
import pyarrow as pa
import pytest

from model.runtime import TensorflowRuntime as ModelScorer
from transforms.featurize import Featurizer

TEXTS = [
    "Best tent I've ever owned!! Really happy with it.",
    "Customer service was useless, no refund. Very disappointed, wouldn't buy it again.",
    "not good",
    "café très bien 😀",
    "",
    " ".join(["works"] * 80),
]


@pytest.fixture(scope="module")
def arrays(bundle):
    n = 1000  # not a multiple of any batch size below, so every call pads its last batch
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "review_text": [TEXTS[i % len(TEXTS)] for i in range(n)],
            "age": rng.uniform(18, 85, n),
            "purchase_history": rng.lognormal(5.0, 1.1, n),
        }
    )
    numeric, tokens, _, _ = Featurizer.from_bundle(bundle).featurize(table, "review_text")
    return numeric, tokens


@pytest.fixture(scope="module")
def uncompiled(bundle, arrays):
    numeric, tokens = arrays
    return np.asarray(bundle.model([numeric, tokens], training=False)).reshape(-1)


@pytest.mark.parametrize("batch_size", [256, 4096])
def test_compiled_fixed_shape_scores_match_the_uncompiled_model(bundle, arrays, uncompiled, batch_size):
    numeric, tokens = arrays
    scores = ModelScorer(bundle.model, batch_size=batch_size, jit_compile=True).predict(numeric, tokens)
    assert scores.shape == uncompiled.shape and scores.dtype == np.float32
    np.testing.assert_allclose(scores, uncompiled, atol=1e-5, rtol=0)


def test_padding_of_the_last_batch_does_not_change_scores(bundle, arrays, uncompiled):
    numeric, tokens = arrays
    scorer = ModelScorer(bundle.model, batch_size=256, jit_compile=True)
    for n in (1, 255, 257):
        np.testing.assert_allclose(scorer.predict(numeric[:n], tokens[:n]), uncompiled[:n], atol=1e-5, rtol=0)
