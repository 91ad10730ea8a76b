"""The scaler: statistics from the training split, applied to whole columns."""

import numpy as np
import pyarrow as pa
import pytest

from transforms.numeric import Scaler, feature_matrix

FEATURES = ["age", "purchase_history"]


def test_fit_then_transform_standardizes():
    table = pa.table({"age": [20, 40, 60], "purchase_history": [1.0, 2.0, 3.0]})
    scaler = Scaler.fit(table, FEATURES)
    scaled = scaler.transform(table)
    assert scaled.dtype == np.float32 and scaled.shape == (3, 2)
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(scaled.std(axis=0), 1, atol=1e-6)


def test_zero_standard_deviation_maps_constant_to_zero():
    table = pa.table({"age": [30.0, 30.0], "purchase_history": [5.0, 7.0]})
    scaler = Scaler.fit(table, FEATURES)
    assert scaler.std[0] == 1.0
    scaled = scaler.transform(pa.table({"age": [30.0, 31.0], "purchase_history": [6.0, 6.0]}))
    assert scaled[:, 0].tolist() == [0.0, 1.0]
    assert np.isfinite(scaled).all()


def test_saved_statistics_are_used_not_recomputed():
    scaler = Scaler(tuple(FEATURES), (10.0, 0.0), (2.0, 4.0))
    scaled = scaler.transform(pa.table({"age": [14.0], "purchase_history": [-8.0]}))
    assert scaled.tolist() == [[2.0, -2.0]]
    assert Scaler.from_dict(scaler.to_dict()) == scaler


def test_fit_refuses_non_finite_and_empty():
    with pytest.raises(ValueError, match="non-finite"):
        Scaler.fit(pa.table({"age": [1.0, float("nan")], "purchase_history": [1.0, 2.0]}), FEATURES)
    with pytest.raises(ValueError, match="zero rows"):
        Scaler.fit(
            pa.table({"age": pa.array([], pa.float64()), "purchase_history": pa.array([], pa.float64())}), FEATURES
        )


def test_feature_matrix_turns_nulls_into_nan_and_ints_into_floats():
    matrix = feature_matrix(
        pa.table({"age": pa.array([1, None], pa.int32()), "purchase_history": [2.5, 3.0]}), FEATURES
    )
    assert matrix.dtype == np.float64
    assert matrix[0].tolist() == [1.0, 2.5] and np.isnan(matrix[1, 0])
