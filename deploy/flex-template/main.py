"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): `sentiment-score score` with the template parameters."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

# The Dataflow job config inside the image, relative to the repo root (/template); the `config` parameter overrides it.
DEFAULT_CONFIG = "configs/dataflow.yaml"

# The argument mapping lives in one place, deploy/airflow/launch_score.py, which the Dockerfile copies alongside.
_LAUNCHER = Path(__file__).resolve().parents[1] / "airflow" / "launch_score.py"


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_score", _LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_argv(argv: Sequence[str]) -> list[str]:
    """The launcher's mapping with this template's default config."""
    return _launcher().build_argv(argv, default_config=DEFAULT_CONFIG)


def main(argv: Sequence[str] | None = None) -> int:
    """Called by the template launcher as `python main.py --runner=DataflowRunner ... --date=D ...`."""
    return _launcher().main(sys.argv[1:] if argv is None else argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    sys.exit(main())
