"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit `sentiment-score score` and return, not wait."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# The Dataflow job config inside the image, relative to the repo root (/template); the `config` parameter overrides it.
DEFAULT_CONFIG = "configs/dataflow.yaml"
# The runtime image this template image was built on (deploy/flex-template/Dockerfile sets it from WORKER_IMAGE): the
# workers get the environment the launcher has.
WORKER_IMAGE_ENV = "SENTIMENT_WORKER_IMAGE"
# Dataflow's template launcher must not wait for the job: the job is submitted and this process exits 0. The pipeline
# publishes each partition itself; `sentiment-score verify --output OUT --date D` tells when it is complete.
NO_WAIT = "--no-wait"

# The argument mapping lives in one place, deploy/airflow/launch_score.py, which the Dockerfile copies alongside.
_LAUNCHER = Path(__file__).resolve().parents[1] / "airflow" / "launch_score.py"


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_score", _LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names_option(args: Sequence[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def build_argv(argv: Sequence[str], worker_image: str | None = None) -> list[str]:
    """The launcher's mapping with this template's default config, the workers' image, and no waiting.

    `worker_image` (default: $SENTIMENT_WORKER_IMAGE) becomes --sdk_container_image unless the launch passes one.
    """
    args = _launcher().build_argv(argv, default_config=DEFAULT_CONFIG)
    worker_image = os.environ.get(WORKER_IMAGE_ENV) if worker_image is None else worker_image
    if worker_image and not _names_option(args, "--sdk_container_image"):
        args.append(f"--sdk_container_image={worker_image}")
    if NO_WAIT not in args:
        args.append(NO_WAIT)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Called by the template launcher as `python main.py --runner=DataflowRunner ... --date=D ...`."""
    return _launcher().main(build_argv(sys.argv[1:] if argv is None else argv), default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    sys.exit(main())
