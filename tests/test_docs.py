"""The READMEs say what the code does: deploy/README.md against the DAG's retry rule and the configs' output formats,
the README's settings table against ScoreConfig, the configs against the defaults, and the README's reading snippet
run against a published partition."""

import ast
import dataclasses
import glob
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.publish.parquet import ParquetFolders
from pipeline.publish.publisher import PartitionFacts, RowCounts
from pipeline.run.config import ScoreConfig, load_config, read_config_file
from transforms.io import Shard

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEPLOY_README = (ROOT / "deploy" / "README.md").read_text()
DAG = ROOT / "deploy" / "airflow" / "review_sentiment_dag.py"
# Configs that state only what differs from the defaults (the remote runners' configs are all differences anyway).
MINIMAL_CONFIGS = ("local.yaml", "nightly.yaml", "backfill.yaml")


def _constants(tree: ast.Module) -> dict:
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name)
    }


def dag_retries_usage_errors(source: str) -> bool:
    """Whether the DAG's scoring task retries the job's exit 2: it does unless an operator turns exit EXIT_USAGE
    into AirflowFailException (Airflow's "fail without retries")."""
    tree = ast.parse(source)
    usage = _constants(tree).get("EXIT_USAGE")
    operators = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    fails_for_good = [
        node
        for node in operators
        if any(isinstance(n, ast.Raise) and "AirflowFailException" in ast.unparse(n) for n in ast.walk(node))
    ]
    return not (usage == 2 and any("EXIT_USAGE" in ast.unparse(node) for node in fails_for_good))


def rows_for_exit(text: str, code: int) -> list[str]:
    return [line for line in text.splitlines() if re.match(rf"^\|\s*{code}\s*\|", line)]


def says_retried(row: str) -> bool:
    """A table row that says the code is retried (not "not retried", "no retry", "no:")."""
    return bool(re.search(r"(?<!not )\bretried\b", row))


def test_deploy_readme_says_what_the_dag_does_with_exit_2():
    retried = dag_retries_usage_errors(DAG.read_text())
    assert not retried  # the DAG's rule, read from the DAG
    rows = rows_for_exit(DEPLOY_README, 2)
    assert rows
    assert [r for r in rows if says_retried(r)] == []
    assert not re.search(r"config error \(2\)[^.]*retried", DEPLOY_README)


def test_the_retry_check_reads_a_dag_without_the_rule_as_retrying_exit_2():
    without = DAG.read_text().replace("raise AirflowFailException", "raise AirflowException")
    assert dag_retries_usage_errors(without)
    assert says_retried("| 2 | failed (usage/config): retried, and fails the same way | failed at once |")
    assert not says_retried("| 2 | failed at once, not retried | failed at once, no retry |")


def _deploy_configs() -> list[str]:
    table = DEPLOY_README.split("## Exit codes")[0]
    return sorted(set(re.findall(r"`(configs/[\w.-]+\.yaml)`", table)))


def format_claims(text: str, config: str) -> set[str]:
    """The formats the text says a config publishes: "`configs/X.yaml` ... publishes Iceberg|Parquet"."""
    sentences = re.findall(rf"`{re.escape(config)}`[^.]*?publishes\s+(Iceberg|Parquet)", text)
    return {s.lower() for s in sentences}


@pytest.mark.parametrize("config", _deploy_configs())
def test_deploy_readme_names_the_format_each_deploy_config_publishes(config):
    assert format_claims(DEPLOY_README, config) == {load_config(str(ROOT / config)).output_format}


def test_deploy_readme_promises_success_files_only_with_parquet():
    for sentence in re.split(r"(?<=\.)\s", DEPLOY_README.split("## Exit codes")[0]):
        if re.search(r"wait (for|with)[^.]*`_SUCCESS`", sentence):
            assert "Parquet" in sentence, sentence


def test_the_format_check_catches_a_wrong_claim():
    assert format_claims("`configs/nightly.yaml` (cron) publishes Parquet.", "configs/nightly.yaml") == {"parquet"}


def settings_in_table(text: str) -> set[str]:
    table = text.split("## Configuration")[1].split("\n\n| config |")[0]
    return {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }


def test_the_readme_settings_table_names_every_setting():
    assert {f.name for f in dataclasses.fields(ScoreConfig)} - settings_in_table(README) == set()


def restated_defaults(settings: dict) -> list[str]:
    """The settings of a config file that only repeat ScoreConfig's defaults (beam: key by key)."""
    defaults = ScoreConfig()
    restated = []
    for key, value in settings.items():
        if key == "beam":
            restated += [f"beam.{k}" for k, v in value.items() if defaults.beam.get(k) == v]
        elif key != "columns" and getattr(defaults, key, object()) == value:
            restated.append(key)
    return restated


@pytest.mark.parametrize("name", MINIMAL_CONFIGS)
def test_configs_state_only_what_differs_from_the_defaults(name):
    assert restated_defaults(read_config_file(str(ROOT / "configs" / name))) == []
    load_config(str(ROOT / "configs" / name))  # and still load


def test_the_restated_default_check_finds_them():
    assert restated_defaults({"read_batch_size": 16384, "output": "x", "beam": {"runner": "DirectRunner"}}) == [
        "read_batch_size",
        "beam.runner",
    ]


# --- the README's reading snippet, run ---

SCORES = pa.schema(
    [
        ("review_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("sentiment_score", pa.float32()),
        ("model_version", pa.string()),
    ]
)
REJECTS = pa.schema(
    [("review_id", pa.int64()), ("customer_id", pa.int64()), ("reason", pa.string()), ("detail", pa.string())]
)


@pytest.fixture
def published_output(tmp_path):
    """Two days published by the real Parquet protocol: three scores and one reject each."""
    output = tmp_path / "out"
    for day in ("2026-11-27", "2026-11-28"):
        staged = tmp_path / "staging" / day
        staged.mkdir(parents=True)
        pq.write_table(
            pa.table([[1, 2, 3], [7, 7, 8], [0.1, 0.5, 0.9], ["v"] * 3], schema=SCORES), staged / "scores-r-0.parquet"
        )
        pq.write_table(
            pa.table([[4], [9], ["missing_customer"], ["no such customer"]], schema=REJECTS),
            staged / "rejects-r-0.parquet",
        )
        shards = [
            Shard("scores", str(staged / "scores-r-0.parquet"), 3),
            Shard("rejects", str(staged / "rejects-r-0.parquet"), 1),
        ]
        facts = PartitionFacts("r", "v", RowCounts(read=4, scored=3, rejected=1), partition=day)
        ParquetFolders(str(output)).publish(day, shards, facts, {"summary.json": b"{}"}, lambda: None)
    return output


def _snippet() -> str:
    block = README.split("```python\nimport pyarrow as pa\n")[1].split("```")[0]
    return "import pyarrow as pa\n" + block.split("\n\nimport json\n")[0]


def test_the_readme_pyarrow_snippet_reads_the_scores_with_dt_as_a_date(published_output):
    namespace = {}
    exec(_snippet().replace('"OUTPUT"', repr(str(published_output))), namespace)  # noqa: S102 - our own README
    scores = namespace["scores"]
    assert scores.schema.field("dt").type == pa.date32()
    assert scores.num_rows == 6 and "reason" not in scores.column_names


def test_the_readme_globs_match_scores_only_and_say_why_not_double_star(published_output):
    patterns = set(re.findall(r"'OUTPUT(/[^']+)'|\"OUTPUT(/[^\"]+)\"", _snippet()))
    globs = {a or b for a, b in patterns}
    assert globs == {"/dt=*/*.parquet"}
    for pattern in globs:
        matched = glob.glob(str(published_output) + pattern)
        assert len(matched) == 2 and all(os.path.basename(p).startswith("scores-") for p in matched)
    double_star = glob.glob(f"{published_output}/**/*.parquet", recursive=True)
    assert any("/_rejects/" in p for p in double_star)  # what the README warns about
    assert "`OUTPUT/**/*.parquet` (DuckDB, polars) also matches" in README
