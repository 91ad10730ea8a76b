"""Failpoints: a point armed runs its action, one not armed does nothing, a name not declared is refused, and the
environment arms a point in the process that reads it (a real child process stopped and resumed at one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import apache_beam as beam
import pytest

from pipeline import failpoints
from pipeline.run.graph import build_pipeline
from pipeline.run.plan import plan_run
from tests.conftest import SAMPLE_DATE, sample_config


def test_an_armed_point_runs_its_action_with_its_name_only_inside_the_block():
    seen = []
    with failpoints.armed("parquet.manifest", seen.append):
        failpoints.hit("parquet.manifest")
        failpoints.hit("parquet.moved")  # another point: not armed
        assert failpoints.is_armed("parquet.manifest") and not failpoints.is_armed("parquet.moved")
    failpoints.hit("parquet.manifest")  # after the block: off again
    assert seen == ["parquet.manifest"] and not failpoints.is_armed("parquet.manifest")


def test_a_point_not_armed_does_nothing():
    """The twin: every declared point is off unless armed, and hitting it runs nothing."""
    assert not [name for name in failpoints.POINTS if failpoints.is_armed(name)]
    for name in failpoints.POINTS:
        failpoints.hit(name)


def test_raise_fails_the_process_at_the_point_and_times_limits_the_hits():
    with failpoints.armed(failpoints.ICEBERG_PUBLISH, "raise", times=1):
        with pytest.raises(failpoints.FailpointHit, match="^iceberg.scores-planned$"):
            failpoints.hit("iceberg.scores-planned")
        failpoints.hit("iceberg.scores-planned")  # fired once: passed through now
        with pytest.raises(failpoints.FailpointHit, match="^iceberg.rejects-planned$"):
            failpoints.hit("iceberg.rejects-planned")  # each point counts its own hits


def test_without_times_every_hit_fires():
    """The twin: no count, no limit."""
    seen = []
    with failpoints.armed("iceberg.moved", seen.append):
        for _ in range(3):
            failpoints.hit("iceberg.moved")
    assert seen == ["iceberg.moved"] * 3


def test_a_name_not_declared_is_refused_wherever_it_is_given():
    for use in (failpoints.hit, failpoints.is_armed):
        with pytest.raises(failpoints.FailpointError, match="no failpoint 'parquet.manifset'"):
            use("parquet.manifset")
    with pytest.raises(failpoints.FailpointError, match="no failpoint 'parquet.manifset'"):
        failpoints.armed(["parquet.moved", "parquet.manifset"], "raise").__enter__()
    assert not failpoints.is_armed("parquet.moved")  # a refused call arms nothing


def test_the_groups_name_declared_points_in_publish_order():
    """The twin: what the fault tests parametrize over is declared, in the order a publish reaches it."""
    assert list(failpoints.PARQUET_PUBLISH) == [n for n in failpoints.POINTS if n.startswith("parquet.")]
    assert list(failpoints.ICEBERG_PUBLISH) == [n for n in failpoints.POINTS if n.startswith("iceberg.")]


@pytest.mark.parametrize("action", ["explode", 0])
def test_an_action_neither_known_nor_callable_is_refused(action):
    with pytest.raises(failpoints.FailpointError, match="failpoint action"):
        failpoints.armed("parquet.moved", action).__enter__()


# ---------------------------------------------------------------------------------------------------------------------
# The environment: SENTIMENT_SCORE_FAILPOINTS="name=[N*]action,..."


def test_the_environment_value_arms_each_named_point_with_its_action_and_count():
    armed = failpoints.parse(" parquet.moved=raise, iceberg.cleaned=2*sigstop,")
    assert {name: (a.action, a.times) for name, a in armed.items()} == {
        "parquet.moved": ("raise", None),
        "iceberg.cleaned": ("sigstop", 2),
    }
    assert failpoints.parse("") == {}


@pytest.mark.parametrize(
    "value, error",
    [
        ("parquet.moved", "cannot read 'parquet.moved'"),
        ("parquet.moved=explode", "cannot read 'parquet.moved=explode'"),
        ("parquet.moved=x*raise", "cannot read 'parquet.moved=x\\*raise'"),
        ("parquet.moved=raise,parquet.moved=sigstop", "each name once"),
        ("parquet.moved=0*raise", "never fires"),
        ("parquet.manifset=raise", "no failpoint 'parquet.manifset'"),
    ],
)
def test_an_environment_value_that_cannot_be_read_is_refused_naming_the_variable(value, error):
    """The twin: a typo in the variable fails, instead of arming nothing."""
    with pytest.raises(failpoints.FailpointError, match=f"^{failpoints.ENV}=.*{error}"):
        failpoints.parse(value)


# A child that hits a point twice, then says so: stopped by the environment at the first hit, or not at all.
_CHILD = (
    "from pipeline import failpoints; failpoints.hit('parquet.moved'); failpoints.hit('parquet.moved'); print('ran')"
)


def _child(value: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV}
    env.update({failpoints.ENV: value} if value is not None else {})
    return subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_the_environment_stops_the_process_that_hits_the_point_once_and_it_runs_on_when_resumed():
    child = _child("parquet.moved=1*sigstop")
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)  # returns when the child stops (or ends)
        assert os.WIFSTOPPED(status), status
        child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert (child.returncode, out) == (0, b"ran\n"), err  # the second hit passed: the count was 1


@pytest.mark.slow
def test_without_the_environment_the_process_runs_through_the_point():
    """The twin: the same child, nothing armed, never stops."""
    child = _child(None)
    _, status = os.waitpid(child.pid, os.WUNTRACED)
    assert os.WIFEXITED(status) and os.waitstatus_to_exitcode(status) == 0, status
    child.returncode = 0  # reaped above
    assert child.stdout.read() == b"ran\n"


@pytest.mark.slow
def test_the_environment_raise_fails_the_child_and_a_typo_stops_it_at_import():
    failed = _child("parquet.moved=raise")
    _, err = failed.communicate(timeout=60)
    assert failed.returncode == 1 and b"FailpointHit: parquet.moved" in err
    typo = _child("parquet.moved=rasie")
    _, err = typo.communicate(timeout=60)
    assert typo.returncode == 1 and b"cannot read 'parquet.moved=rasie'" in err


# ---------------------------------------------------------------------------------------------------------------------
# The graph's step at score.shard-written exists only when the point is armed: no per-element cost otherwise


def _labels(config, plan) -> set[str]:
    pipeline = beam.Pipeline(runner="FnApiRunner")
    build_pipeline(pipeline, config, plan)
    return {label.rsplit("/", 1)[-1] for label in pipeline.applied_labels}


def test_the_graph_has_the_failpoint_step_when_the_point_is_armed(sample_dir, bundle_dir, tmp_path):
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", date=SAMPLE_DATE, runtime="litert")
    plan = plan_run(config, [SAMPLE_DATE])
    with failpoints.armed("score.shard-written", lambda name: None):
        assert "FailpointShardWritten" in _labels(config, plan)
    plain = _labels(config, plan)
    assert "WriteScores" in plain and "FailpointShardWritten" not in plain  # the twin: not armed, no step
