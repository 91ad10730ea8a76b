"""`sentiment-score --version`: the job's version, and the model bundle's when the config's model_dir resolves."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

DISTRIBUTION = "review-sentiment-scoring"


def job_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def bundle_line(config_path: str | None) -> str:
    """The bundle the config (the default one when None) would score with, or why it cannot be named."""
    from model.bundle import BundleError, check_bundle, resolve_model_dir
    from pipeline.errors import ConfigError
    from pipeline.run.config import load_config

    try:
        model_dir = load_config(config_path).model_dir
    except ConfigError as e:
        return f"model bundle: not resolvable ({e})"
    try:
        bundle = check_bundle(resolve_model_dir(model_dir))
    except (BundleError, OSError, ValueError) as e:
        return f"model bundle: not resolvable ({' '.join(str(e).split())[:300]})"
    return f"model bundle {bundle.path}: version {bundle.model_version}"


class VersionAction(argparse.Action):
    """Prints the versions and exits 0, like argparse's own version action, after reading --config if given first."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from pipeline.cli.quiet import configure_output

        configure_output(verbose=False)
        print(f"sentiment-score {job_version()} (distribution {DISTRIBUTION})")
        print(bundle_line(getattr(namespace, "config", None)))
        sys.stdout.flush()
        parser.exit(0)
