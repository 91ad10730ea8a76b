"""Scaling of the numeric customer features with statistics saved at training time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Scaler:
    """Standardizes features as (x - mean) / std; a zero std is stored as 1 so a constant feature maps to 0."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"feature_names": list(self.feature_names), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(tuple(data["feature_names"]), tuple(data["mean"]), tuple(data["std"]))

    @classmethod
    def fit(cls, table: pa.Table, feature_names: Sequence[str]) -> Scaler:
        matrix = feature_matrix(table, feature_names)
        if len(matrix) == 0:
            raise ValueError("cannot fit a scaler on zero rows")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("cannot fit a scaler on non-finite values: filter them first")
        mean = matrix.mean(axis=0)
        std = matrix.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(tuple(feature_names), tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def transform(self, table: pa.Table) -> np.ndarray:
        """An (n, features) float32 matrix of scaled values."""
        matrix = feature_matrix(table, self.feature_names)
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        return ((matrix - mean) / std).astype(np.float32)


def feature_matrix(table: pa.Table, feature_names: Sequence[str]) -> np.ndarray:
    """The named columns as an (n, features) float64 matrix; nulls become NaN."""
    columns = []
    for name in feature_names:
        column = table[name]
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        columns.append(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
    if not columns:
        return np.zeros((table.num_rows, 0))
    return np.column_stack(columns).astype(np.float64, copy=False)
