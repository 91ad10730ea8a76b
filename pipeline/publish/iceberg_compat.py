"""The private pyiceberg APIs the Iceberg publisher uses, in one place: a pyiceberg upgrade that moves one breaks here.

Checked against pyiceberg 0.12 (constraints.txt). Each function says which private name it stands in for and why no
public API fits, so an upgrade can replace it with the public one when there is.
"""

from __future__ import annotations

import functools

import pyarrow as pa


def iceberg_schema(arrow_schema: pa.Schema):
    """The Iceberg schema (fresh field ids) an Arrow schema stands for; string and large_string are one type, a
    non-nullable Arrow field is a required column.

    Private `Catalog._convert_schema_if_needed`: what `create_table` does with an Arrow schema, needed here before a
    table exists (to compare a run's columns with a table's in the same terms, and to build the partition spec).
    """
    from pyiceberg.catalog import Catalog

    return Catalog._convert_schema_if_needed(arrow_schema)


def append_checked(table, transaction, snapshot_properties: dict[str, str], conflict_filter):
    """A producer of an `append` snapshot (add data files, remove none) whose commit fails, rather than rebases,
    when another writer added or removed data files matching conflict_filter since the transaction began.

    Use as `with append_checked(table, table.transaction(), summary, EqualTo("dt", day)) as append:` then
    `append.append_data_file(data_file)`; the main branch, as `transaction.update_snapshot()` defaults to.

    Why: pyiceberg's public `fast_append()` never validates concurrent changes (its `_validate_concurrency` is a
    no-op), so pyiceberg's own commit retry would rebase it over another run's publish of the same day and the day
    would hold both runs' rows; `overwrite()` validates but labels every snapshot `overwrite`, which Spark streaming
    reads refuse and incremental append scans skip. This is `_FastAppendFiles` (private) with the validation of
    `_SnapshotProducer` (private) scoped by `_predicate` (private), as an overwrite's `delete_by_predicate` scopes it.
    A conflict raises pyiceberg's ValidationException; CommitFailedException as for any commit.
    """
    from pyiceberg.table.refs import MAIN_BRANCH
    from pyiceberg.table.snapshots import Operation

    producer = _checked_append_class()(
        operation=Operation.APPEND,
        transaction=transaction,
        io=table.io,
        branch=MAIN_BRANCH,
        snapshot_properties=snapshot_properties,
    )
    producer.delete_by_predicate(conflict_filter)  # deletes nothing in an append: it only scopes the validation
    return producer


@functools.cache
def _checked_append_class() -> type:
    """Made on first use, so importing this module does not import pyiceberg (start-up time)."""
    from pyiceberg.table.update.snapshot import _FastAppendFiles, _SnapshotProducer

    class CheckedAppend(_FastAppendFiles):
        _validate_concurrency = _SnapshotProducer._validate_concurrency

    return CheckedAppend
