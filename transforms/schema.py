"""Column names, the canonical Arrow types the stages agree on, and the output schemas."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# Internal columns carried from the read to validation: where a row came from, for deterministic tie-breaking.
FILE_INDEX = "__file_index"
ROW_INDEX = "__row_index"

SCORE = "sentiment_score"
MODEL_VERSION = "model_version"
REASON = "reason"
DETAIL = "detail"


class InputError(ValueError):
    """A fatal problem with the input data (file, column or type); the message names it."""


# The side output every stage sends a partition-level failure to: a failure that cannot be isolated to rows (an
# unreadable page, a model that fails on every call). The partition it names is not published; the others are.
FAILURES = "failures"


@dataclass(frozen=True)
class PartitionFailure:
    """What a stage emits as (partition, failure) on FAILURES: the stage and why; the commit step refuses that
    partition."""

    stage: str
    message: str


def partition_failure(stage: str, message: str) -> PartitionFailure:
    """A stage's failure record, its message on one line of at most 600 characters."""
    return PartitionFailure(stage, " ".join(str(message).split())[:600])


@dataclass(frozen=True)
class Columns:
    """Input column names; configurable in YAML, defaulting to the documented schema."""

    review_id: str = "review_id"
    customer_id: str = "customer_id"
    review_text: str = "review_text"
    label: str = "label"
    features: tuple[str, ...] = ("age", "purchase_history")

    def review_columns(self) -> list[str]:
        return [self.review_id, self.customer_id, self.review_text]

    def customer_columns(self) -> list[str]:
        return [self.customer_id, *self.features]


def id_kind(arrow_type: pa.DataType) -> str | None:
    """'int' or 'string' for a type an id column may have; None otherwise."""
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def text_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    return None


def is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)


KIND_TYPES = {"int": pa.int64(), "string": pa.string(), "binary": pa.binary()}


@dataclass(frozen=True)
class RunSchema:
    """The canonical types of one run, decided from the input files at start-up."""

    columns: Columns = field(default_factory=Columns)
    review_id_kind: str = "int"
    customer_id_kind: str = "int"
    text_kind: str = "string"

    @property
    def review_id_type(self) -> pa.DataType:
        return KIND_TYPES[self.review_id_kind]

    @property
    def customer_id_type(self) -> pa.DataType:
        return KIND_TYPES[self.customer_id_kind]

    def reviews_schema(self) -> pa.Schema:
        c = self.columns
        return pa.schema(
            [
                (c.review_id, self.review_id_type),
                (c.customer_id, self.customer_id_type),
                (c.review_text, KIND_TYPES[self.text_kind]),
                (FILE_INDEX, pa.int32()),
                (ROW_INDEX, pa.int64()),
            ]
        )

    def customers_schema(self) -> pa.Schema:
        c = self.columns
        fields = [(c.customer_id, self.customer_id_type)] + [(f, pa.float64()) for f in c.features]
        return pa.schema(fields + [(FILE_INDEX, pa.int32()), (ROW_INDEX, pa.int64())])

    def scores_schema(self) -> pa.Schema:
        c = self.columns
        return pa.schema(
            [
                (c.review_id, self.review_id_type),
                (c.customer_id, self.customer_id_type),
                (SCORE, pa.float32()),
                (MODEL_VERSION, pa.string()),
            ]
        )

    def rejects_schema(self) -> pa.Schema:
        c = self.columns
        return pa.schema(
            [
                (c.review_id, self.review_id_type),
                (c.customer_id, self.customer_id_type),
                (REASON, pa.string()),
                (DETAIL, pa.string()),
                (c.review_text, KIND_TYPES[self.text_kind]),
                *[(f, pa.float64()) for f in c.features],
            ]
        )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Selects and casts the schema's columns, in its order; missing ones become nulls. A value the cast cannot
    hold (a uint64 id above int64's range) is an InputError naming the column."""
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            column = table[f.name]
            try:
                arrays.append(column if column.type == f.type else column.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                reason = " ".join(str(e).split())[:200]
                raise InputError(f"column {f.name!r} ({column.type}) does not fit {f.type}: {reason}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
