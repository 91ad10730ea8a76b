"""Beam's pipeline options for a run, checked at start-up: an option or runner Beam rejects is a usage error."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.errors import ConfigError
from pipeline.run.config import LOCAL_RUNNERS, ScoreConfig
from transforms.beam_compat import add_pipeline_option_flags


class _Refused(Exception):
    """An option argparse would have refused with SystemExit: raised instead, with argparse's message."""


class _OptionParser(argparse.ArgumentParser):
    def error(self, message):
        raise _Refused(message)


def _known_beam_flags() -> argparse.ArgumentParser:
    parser = _OptionParser(allow_abbrev=False, add_help=False)
    add_pipeline_option_flags(parser)
    return parser


def _check_runner(name: str) -> None:
    """Beam's own lookup of a runner name: a name it does not know, or a runner whose extra is not installed, stops
    the run here, before any lease, folder or run record exists (found at pipeline.run() it cost all three)."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except ValueError as e:
        raise ConfigError(f"option --runner {name}: {' '.join(str(e).split())}") from None
    except ImportError as e:
        raise ConfigError(f"option --runner {name}: {e}") from None


def pipeline_options(config: ScoreConfig, beam_flags: list[str]) -> PipelineOptions:
    """Beam options from the config's beam section then the command line; an unknown flag, a value Beam's parser
    refuses (--direct_num_workers=two) or a runner Beam does not know is a usage error (ConfigError, exit 2)."""
    flags = config.beam_flags() + list(beam_flags)
    try:
        _, unknown = _known_beam_flags().parse_known_args(flags)
    except _Refused as e:
        raise ConfigError(f"Beam option: {e}") from None
    unknown = [u for u in unknown if u.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (not a sentiment-score or Beam pipeline option)")
    options = PipelineOptions(flags)
    name = options.view_as(StandardOptions).runner
    if name and name not in LOCAL_RUNNERS:
        _check_runner(name)
    return options


def make_runner(options: PipelineOptions):
    """The runner to use: DirectRunner means Beam's FnApiRunner, which DirectRunner itself falls back to for a
    batch pipeline after trying Prism (a binary it would download); naming it directly keeps runs offline."""
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    if name in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name
