"""The typed config: YAML files, overrides, validation that names the setting, and Beam option pass-through."""

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.cli.main import MALLOC_ARENAS, _overrides, build_parser, limit_malloc_arenas
from pipeline.errors import ConfigError
from pipeline.run.config import build_config, load_config
from pipeline.run.graph import model_handler, several_processes_per_machine, threads_per_process
from pipeline.run.options import make_runner, pipeline_options
from transforms.pinned import PinnedBundle
from transforms.schema import RunSchema

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


def test_every_shipped_config_exists_and_loads_with_known_beam_options():
    names = {p.stem for p in CONFIGS}
    assert {"local", "nightly", "backfill", "dataflow", "flink", "spark"} <= names
    for path in CONFIGS:
        config = load_config(str(path))
        options = pipeline_options(config, []).get_all_options()
        assert options["runner"] == config.beam["runner"], path


def test_remote_configs_carry_what_their_runners_need():
    def beam_section(name):
        return load_config(str(next(p for p in CONFIGS if p.stem == name))).beam

    dataflow = beam_section("dataflow")
    for key in ("project", "region", "temp_location", "staging_location", "sdk_container_image", "machine_type"):
        assert key in dataflow, key
    # The runtime image has the project installed: staging it as well would make every worker build it again.
    assert not {"setup_file", "requirements_file", "save_main_session"} & dataflow.keys()
    # The fallback without an image installs the pinned versions, then the project, from files in the repo.
    fallback = beam_section("dataflow-setup-file")
    assert "sdk_container_image" not in fallback
    assert (fallback["requirements_file"], fallback["setup_file"]) == ("./constraints.txt", "./setup.py")
    root = CONFIGS[0].parents[1]
    assert (root / fallback["requirements_file"]).is_file() and (root / fallback["setup_file"]).is_file()
    for name in ("flink", "spark"):
        config = beam_section(name)
        assert (config["environment_type"], config["environment_config"]) == ("EXTERNAL", "localhost:50000"), name
        assert "setup_file" not in config, name


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: from-file\ninference_batch_size: 128\nbeam:\n  runner: DirectRunner\n")
    config = load_config(str(path), {"output": "from-cli", "beam": {"direct_num_workers": 2}})
    assert config.output == "from-cli" and config.inference_batch_size == 128
    assert config.beam == {"runner": "DirectRunner", "direct_num_workers": 2}


def test_defaults_without_a_file_are_the_documented_schema():
    config = build_config({})
    assert config.columns.features == ("age", "purchase_history")
    assert config.columns.review_id == "review_id" and config.inference_batch_size > 0
    assert config.snapshot_retention_days is None  # snapshots are never expired unless asked
    assert build_config({"output_format": "iceberg", "snapshot_retention_days": 7}).snapshot_retention_days == 7.0
    assert config.column_kinds == {}  # taken from the files
    assert build_config({"column_kinds": {"review_id": "string"}}).column_kinds == {"review_id": "string"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"outptu": "x"}, "unknown setting 'outptu'"),
        ({"inference_batch_size": "big"}, "setting 'inference_batch_size' must be int"),
        ({"inference_batch_size": 0}, "setting 'inference_batch_size' must be at least 1"),
        ({"jit_compile": "yes"}, "setting 'jit_compile' must be bool"),
        ({"read_batch_size": True}, "setting 'read_batch_size' must be int"),
        ({"read_batch_size": 0}, "setting 'read_batch_size' must be at least 1"),
        ({"allow_empty": 1}, "setting 'allow_empty' must be bool"),
        ({"columns": {"review_txt": "t"}}, "unknown setting 'columns.review_txt'"),
        ({"columns": {"features": []}}, "setting 'columns.features' must be a non-empty list"),
        ({"psi_threshold": -1}, "setting 'psi_threshold' must be positive"),
        ({"output": ""}, "setting 'output' must not be empty"),
        ({"beam": ["runner"]}, "setting 'beam' must be a mapping"),
        ({"max_reject_fraction": 1.5}, "setting 'max_reject_fraction' must be between 0 and 1, got 1.5"),
        ({"max_reject_fraction": "10%"}, "setting 'max_reject_fraction' must be float"),
        ({"lease_expiry_hours": 0}, "setting 'lease_expiry_hours' must be positive"),
        ({"backfill_chunk_days": 0}, "setting 'backfill_chunk_days' must be at least 1"),
        ({"runtime": "onnx"}, "setting 'runtime' must be one of auto, litert, tensorflow, got 'onnx'"),
        ({"tensorflow_from_rows": 0}, "setting 'tensorflow_from_rows' must be at least 1 or unset, got 0"),
        ({"tensorflow_from_rows": "1M"}, "setting 'tensorflow_from_rows' must be int"),
        ({"broadcast_limit_mb": -1}, "setting 'broadcast_limit_mb' must be 0 or more, got -1"),
        ({"output_format": "delta"}, "setting 'output_format' must be one of parquet, iceberg, got 'delta'"),
        ({"catalog": {"type": "sql"}}, "setting 'catalog' is for output_format iceberg, not parquet"),
        ({"output_format": "iceberg", "catalog": "sqlite"}, "setting 'catalog' must be a mapping"),
        ({"iceberg_tables": {"scores": "review_scores", "rejects": "r.j"}}, "setting 'iceberg_tables' must map"),
        ({"snapshot_retention_days": 7}, "setting 'snapshot_retention_days' is for output_format iceberg, not parquet"),
        (
            {"output_format": "iceberg", "snapshot_retention_days": 0},
            r"setting 'snapshot_retention_days' must be positive \(or unset: never expire\), got 0",
        ),
        ({"output_format": "iceberg", "snapshot_retention_days": "7d"}, "'snapshot_retention_days' must be float"),
        ({"column_kinds": {"customer_id": "int"}}, r"unknown setting 'column_kinds.customer_id' \(known: review_id"),
        ({"column_kinds": {"review_id": "long"}}, "setting 'column_kinds.review_id' must be one of int, string, got"),
        ({"column_kinds": ["review_id"]}, "setting 'column_kinds' must be a mapping"),
    ],
)
def test_invalid_settings_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        build_config(data)


def test_yaml_problems_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("output: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(str(broken))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a config file must hold a mapping"):
        load_config(str(listed))


def test_python_tags_are_refused_by_safe_load(tmp_path):
    # Kept, though it reads like a PyYAML test: it guards our choice of loader (a config from a shared bucket must
    # never run code), which a switch to yaml.unsafe_load in load_config would break without any other test failing.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
        load_config(str(evil))
    assert not marker.exists()


def test_beam_flags_pass_through_and_unknown_flags_are_refused():
    config = build_config({"beam": {"runner": "FnApiRunner", "direct_num_workers": 2}})
    options = pipeline_options(config, ["--direct_running_mode=multi_processing"]).get_all_options()
    assert options["direct_num_workers"] == 2 and options["direct_running_mode"] == "multi_processing"
    with pytest.raises(ConfigError, match="unknown option --direct_num_wrkers=2"):
        pipeline_options(config, ["--direct_num_wrkers=2"])


def test_direct_runner_runs_as_fn_api_runner_offline_and_others_pass_by_name():
    assert isinstance(make_runner(pipeline_options(build_config({}), [])), FnApiRunner)
    remote = build_config({"beam": {"runner": "DataflowRunner"}})
    assert make_runner(pipeline_options(remote, [])) == "DataflowRunner"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--date", "2026-11-28", "--start", "2026-11-27", "--end", "2026-11-28"], "--date or --start/--end, not both"),
        (["--start", "2026-11-27"], "verify needs both --start and --end"),
        (["--start", "2026-11-28", "--end", "2026-11-27"], "--end 2026-11-27 is before --start 2026-11-28"),
    ],
)
def test_verify_usage_errors_exit_2_naming_the_flag(tmp_path, capsys, args, message):
    from pipeline.cli.main import main

    try:
        code = main(["verify", "--output", str(tmp_path), *args])
    except SystemExit as stop:  # argparse's usage errors exit; config errors return
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--date", "2026-11-28"], "verify needs --output or a --config that names the output"),
        (["--output", "o", "--output-format", "delta"], "argument --output-format: invalid choice: 'delta'"),
        (["--config", "no-such.yaml"], "no-such.yaml: config file not found"),
    ],
)
def test_verify_without_an_output_or_with_a_bad_format_or_config_exits_2(tmp_path, capsys, monkeypatch, args, message):
    """The twins of verify's --output/--config/--output-format, from a folder without a default config."""
    from pipeline.cli.main import main

    monkeypatch.chdir(tmp_path)
    try:
        code = main(["verify", *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_several_local_worker_processes_share_the_cores_instead_of_each_taking_background_threads():
    config = build_config({"background_threads": 2})
    cores = os.cpu_count() or 1

    def threads(flags):
        return threads_per_process(pipeline_options(config, flags), config.background_threads)

    assert threads(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]) == max(1, min(2, cores // 2))
    assert threads(["--direct_num_workers=2", "--direct_running_mode=in_memory"]) == 2  # one process: all its own
    assert threads([]) == 2


def test_the_command_line_limits_malloc_arenas_for_itself_and_its_workers_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == MALLOC_ARENAS
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # an operator's own setting is kept
    limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == "4"


def test_several_processes_per_machine_is_multi_processing_or_a_remote_runner():
    def several(beam_options, flags=()):
        config = build_config({"beam": beam_options})
        return several_processes_per_machine(pipeline_options(config, list(flags)))

    assert several({"runner": "FnApiRunner"}, ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert several({"runner": "DataflowRunner"})
    assert not several({"runner": "FnApiRunner"})
    assert not several({"runner": "DirectRunner"}, ["--direct_num_workers=2", "--direct_running_mode=in_memory"])


# ---------------------------------------------------------------------------------------------------------------------
# The model runtime: named on the command line, and a setting the chosen runtime does not use is never dropped silently


def test_the_runtime_flag_overrides_the_config_and_an_unknown_runtime_is_a_usage_error(capsys):
    for command in ("score", "backfill"):
        dates = ["--start", "2026-11-27", "--end", "2026-11-28"] if command == "backfill" else []
        args, _ = build_parser().parse_known_args([command, "--runtime", "tensorflow", *dates])
        assert build_config(_overrides(args)).runtime == "tensorflow"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_known_args(["score", "--runtime", "onnx"])
    assert exit_.value.code == 2 and "--runtime: invalid choice: 'onnx'" in capsys.readouterr().err


IGNORED_ON_LITERT = {"inference_batch_size": 256, "jit_compile": False}
BOTH = ["inference_batch_size 256", "jit_compile false"]


@pytest.mark.parametrize(
    ("settings", "rows", "runtime", "warned"),
    [
        ({"runtime": "auto", **IGNORED_ON_LITERT}, 10_000_000, "litert", BOTH),
        ({"runtime": "litert", **IGNORED_ON_LITERT}, 60_000, "litert", BOTH),
        ({"runtime": "litert", "inference_batch_size": 256}, 10, "litert", ["inference_batch_size 256"]),
        ({"runtime": "litert", "jit_compile": False}, 10, "litert", ["jit_compile false"]),
        # The twins: the same settings where the runtime uses them, and litert with its own batch size.
        ({"runtime": "tensorflow", **IGNORED_ON_LITERT}, 60_000, "tensorflow", []),
        ({"runtime": "auto", "tensorflow_from_rows": 50_000, **IGNORED_ON_LITERT}, 60_000, "tensorflow", []),
        ({"runtime": "litert", "inference_batch_size": 4096, "jit_compile": True}, 60_000, "litert", []),
    ],
    ids=["auto-to-litert", "litert", "litert-batch", "litert-jit", "tensorflow", "auto-to-tensorflow", "litert-own"],
)
def test_a_setting_the_chosen_runtime_ignores_is_warned_about_at_start_up(
    settings, rows, runtime, warned, caplog, monkeypatch
):
    monkeypatch.setattr("model.runtime.cpu_vendor", lambda: "AuthenticAMD")  # no measured switch: the same on any host
    config = build_config({"beam": {"runner": "FnApiRunner"}, **settings})
    plan = SimpleNamespace(rows_by_partition={"2026-11-28": rows}, schema=RunSchema())
    with caplog.at_level(logging.INFO, logger="pipeline.run.graph"):
        model_handler(pipeline_options(config, []), config, plan, PinnedBundle("unused-bundle-dir"), threads=1)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"model runtime {runtime} (setting {settings['runtime']!r}") for m in messages), messages
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(warned), warnings
    for line, setting in zip(warnings, warned):
        assert line.startswith(f"setting {setting} ") and "ignored on model runtime litert (setting 'runtime' " in line


def _chosen_runtime(config, rows, caplog) -> str:
    plan = SimpleNamespace(rows_by_partition={"2026-11-28": rows}, schema=RunSchema())
    with caplog.at_level(logging.INFO, logger="pipeline.run.graph"):
        handler = model_handler(pipeline_options(config, []), config, plan, PinnedBundle("unused-bundle-dir"), 1)
    return handler.runtime


@pytest.mark.parametrize(
    ("vendor", "beam", "settings", "runtime"),
    [
        ("GenuineIntel", {"runner": "FnApiRunner"}, {}, "tensorflow"),
        # The twins: another vendor, a remote runner (its workers' CPUs are not this one's), the operator's setting.
        ("AuthenticAMD", {"runner": "FnApiRunner"}, {}, "litert"),
        ("GenuineIntel", {"runner": "DataflowRunner"}, {}, "litert"),
        ("GenuineIntel", {"runner": "FnApiRunner"}, {"tensorflow_from_rows": 20_000_000}, "litert"),
        ("GenuineIntel", {"runner": "FnApiRunner"}, {"runtime": "litert"}, "litert"),
    ],
    ids=["intel-local", "amd-local", "intel-remote", "intel-set-higher", "intel-litert-set"],
)
def test_auto_follows_the_curve_measured_for_this_cpu_vendor_on_local_runs(
    vendor, beam, settings, runtime, caplog, monkeypatch
):
    monkeypatch.setattr("model.runtime.cpu_vendor", lambda: vendor)
    assert _chosen_runtime(build_config({"beam": beam, **settings}), 10_000_000, caplog) == runtime
