"""The broadcast join and the shuffle join, forced on the same dirty data, write the same partition."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.run.launcher import execute
from pipeline.training.sample_data import CUSTOMER_ID_BASE
from tests.conftest import SAMPLE_DATE, colliding_ids, partition_summary, sample_config, shard_paths

# Customers: ids BASE..BASE+4 again in a file that sorts first (these rows win), BASE+5..BASE+9 again in one that
# sorts last (these lose), and null ids in both. Reviews: a file of copies and problems that sorts first.
FIRST, LAST = "a-first.parquet", "z-last.parquet"
EXTRA_CUSTOMERS = 3000  # customers nobody reviews: with them, only the asked-for ones are kept whole


def _customer_file(path, ids, ages, id_type):
    spend = [None if a is None else a * 10.0 for a in ages]
    table = pa.table({"customer_id": pa.array(ids, id_type), "age": pa.array(ages), "purchase_history": spend})
    pq.write_table(table, path, row_group_size=3)


def _string_ids(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("customer_id")
    ids = pc.binary_join_element_wise("cust-", pc.cast(table["customer_id"], pa.string()), "")
    return table.set_column(index, "customer_id", ids)


def _write_dataset(root, sample_dir, string_ids: bool, extra: int) -> dict:
    shutil.copytree(sample_dir / "customers", root / "customers")
    day = root / "reviews" / f"dt={SAMPLE_DATE}"
    shutil.copytree(sample_dir / "reviews" / f"dt={SAMPLE_DATE}", day)
    first = [CUSTOMER_ID_BASE + i for i in range(5)] + [None, None]
    last = [CUSTOMER_ID_BASE + i for i in range(5, 10)] + [None]
    _customer_file(root / "customers" / FIRST, first, [91.0, 92.0, 93.0, 94.0, 95.0, 1.0, 2.0], pa.int64())
    _customer_file(root / "customers" / LAST, last, [81.0, 82.0, 83.0, 84.0, 85.0, 3.0], pa.int64())
    if extra:
        ids = np.arange(10**9, 10**9 + extra)
        _customer_file(root / "customers" / "extra.parquet", ids, np.full(extra, 40.0), pa.int64())
    original = pq.read_table(next(day.glob("*.parquet")))
    copies = original.slice(0, 5)  # duplicate review ids: these copies come first by file, the originals lose
    problems = original.slice(5, 6)
    missing = CUSTOMER_ID_BASE + 10**8
    customer = pa.array([None, None, missing, missing + 1, CUSTOMER_ID_BASE, CUSTOMER_ID_BASE + 5], pa.int64())
    problems = problems.set_column(1, "customer_id", customer)  # 2 null, 2 missing customers, 2 duplicated ones
    problems = problems.set_column(0, "review_id", pc.add(problems["review_id"], 10**9))
    # The duplicated customers' reviews have blank texts: their rejects show which customer row they were joined to.
    problems = problems.set_column(2, "review_text", pa.array(["a", "b", "c", "d", " ", " "]))
    pq.write_table(pa.concat_tables([copies, problems]), day / "a-dirty.parquet")
    if string_ids:
        for path in list((root / "customers").glob("*.parquet")) + list(day.glob("*.parquet")):
            pq.write_table(_string_ids(pq.read_table(path)), path, row_group_size=7)
    return {"customers": str(root / "customers"), "reviews": str(root / "reviews")}


def _run(root, sample_dir, bundle_dir, inputs, broadcast_limit_mb) -> dict:
    output = root / f"out-{broadcast_limit_mb}"
    config = sample_config(
        sample_dir,
        bundle_dir,
        output,
        date=SAMPLE_DATE,
        broadcast_limit_mb=broadcast_limit_mb,
        read_batch_size=50,
        rows_per_read_task=40,
        **inputs,
    )
    assert execute(config, [SAMPLE_DATE], []) == 0
    partition = output / f"dt={SAMPLE_DATE}"

    def read(kind):
        table = pa.concat_tables([pq.read_table(p) for p in shard_paths(partition, kind)])
        keys = [(c, "ascending") for c in ("review_id", "reason", "review_text") if c in table.column_names]
        return table.sort_by(keys)

    return {"scores": read("scores"), "rejects": read("rejects"), "summary": partition_summary(partition)}


@pytest.fixture(scope="module", params=["int-few", "int-many", "string-few", "string-many"])
def both_paths(request, sample_dir, bundle_dir, tmp_path_factory):
    """The same dirty day scored with a broadcast join (limit 512 MiB) and a shuffle join (limit 0)."""
    kind, size = request.param.split("-")
    root = tmp_path_factory.mktemp(request.param)
    inputs = _write_dataset(root, sample_dir, kind == "string", EXTRA_CUSTOMERS if size == "many" else 0)
    return {
        "broadcast": _run(root, sample_dir, bundle_dir, inputs, 512),
        "shuffle": _run(root, sample_dir, bundle_dir, inputs, 0),
        "root": root,
        "inputs": inputs,
    }


@pytest.mark.slow
def test_both_paths_write_identical_scores_and_rejects(both_paths):
    broadcast, shuffle = both_paths["broadcast"], both_paths["shuffle"]
    assert shuffle["scores"].equals(broadcast["scores"])
    assert shuffle["rejects"].equals(broadcast["rejects"])
    for key in ("rows", "rejected_by_reason", "customers", "score_quantiles"):
        assert shuffle["summary"][key] == broadcast["summary"][key], key


@pytest.mark.slow
def test_duplicates_nulls_and_missing_customers_are_counted_on_both_paths(both_paths):
    for path in ("broadcast", "shuffle"):
        summary = both_paths[path]["summary"]
        customers = summary["customers"]
        assert customers["duplicate_customer_ids"] == 10 and customers["null_customer_ids"] == 3, path
        assert customers["customers_read"] == customers["customers_unique"] + 13, path
        reasons = summary["rejected_by_reason"]
        assert reasons["null_customer_id"] == 2 and reasons["duplicate_review_id"] == 5, path
        assert reasons["missing_customer"] >= 2, path
        rows = summary["rows"]
        assert rows["scored"] + rows["rejected"] == rows["read"] == 311, path


@pytest.mark.slow
def test_the_first_customer_row_by_file_wins_on_both_paths(both_paths):
    """BASE+0 is joined to a-first.parquet's row (age 91), BASE+5 to the sample's own row, not z-last's (age 86)."""
    for path in ("broadcast", "shuffle"):
        rejects = both_paths[path]["rejects"]
        blank = rejects.filter(pc.greater(rejects["review_id"], 10**9)).filter(
            pc.equal(rejects["reason"], "empty_text")
        )
        ages = dict(
            zip([str(c).removeprefix("cust-") for c in blank["customer_id"].to_pylist()], blank["age"].to_pylist())
        )
        assert ages[str(CUSTOMER_ID_BASE)] == 91.0, path
        assert ages[str(CUSTOMER_ID_BASE + 5)] not in (81.0, None), path


@pytest.mark.parametrize("broadcast_limit_mb", [512, 0])
@pytest.mark.slow
def test_a_string_id_hash_collision_fails_the_run_naming_both_rows(
    sample_dir, bundle_dir, tmp_path, capsys, broadcast_limit_mb
):
    root = tmp_path / "collide"
    inputs = _write_dataset(root, sample_dir, string_ids=True, extra=0)
    a, b = colliding_ids()
    path = root / "customers" / "b-collide.parquet"
    pq.write_table(pa.table({"customer_id": [a, b], "age": [1.0, 2.0], "purchase_history": [1.0, 2.0]}), path)
    config = sample_config(
        sample_dir, bundle_dir, root / "out", date=SAMPLE_DATE, broadcast_limit_mb=broadcast_limit_mb, **inputs
    )
    capsys.readouterr()
    assert execute(config, [SAMPLE_DATE], []) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sentiment-score: error:")]
    assert len(errors) == 1, errors
    assert f"customer ids at {path} row 0 and {path} row 1 differ but have the same 64-bit hash" in errors[0]
    assert not (root / "out" / f"dt={SAMPLE_DATE}" / "_SUCCESS").exists()
