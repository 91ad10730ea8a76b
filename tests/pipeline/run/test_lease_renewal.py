"""A run renews its leases from before the pipeline starts: a local runner's run() returns only once the job is done,
so a renewal that starts after it never renews while the pipeline runs, and a healthy run longer than the lease's
expiry lost its day. Real FnApiRunner pipelines, a lease expiry of a second and a half, clocks injected (`now=`)."""

from __future__ import annotations

import threading

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.publish import lease
from pipeline.publish.parquet import ParquetFolders, check_partition
from pipeline.run import launcher, leases
from tests.conftest import SAMPLE_DATE, sample_config
from transforms.schema import FILE_INDEX, SCORE

pytestmark = pytest.mark.slow
EXPIRY_HOURS = 0.0004  # 1.44 s: renewed every 0.36 s, so a run of a few seconds outlives it many times over


class RunWhileRenewed(beam.Pipeline):
    """A real pipeline whose run() first waits for the launcher's first lease renewal, as any run longer than a
    quarter of the expiry does, then lets another run ask for the day (`meanwhile`), then runs."""

    def __init__(self, renewed: threading.Event, meanwhile):
        super().__init__(runner=FnApiRunner())
        self.renewed, self.meanwhile, self.saw_renewal = renewed, meanwhile, False

    def run(self, test_runner_api="AUTO"):
        self.saw_renewal = self.renewed.wait(timeout=30)
        self.meanwhile()
        return super().run(test_runner_api)


@pytest.fixture
def renewed(monkeypatch) -> threading.Event:
    """Set once the launcher's renewal has tried to renew (whatever came of it)."""
    event, real = threading.Event(), leases.renew

    def renew_and_tell(plan, partitions):
        try:
            real(plan, partitions)
        finally:
            event.set()

    monkeypatch.setattr(leases, "renew", renew_and_tell)
    return event


def _lease_folder(output) -> str:
    [scope] = ParquetFolders(str(output)).lease_scopes(SAMPLE_DATE)
    return scope.directory


def test_a_run_longer_than_its_lease_keeps_the_day_because_it_renews_while_the_pipeline_runs(
    sample_dir, bundle_dir, tmp_path, renewed, monkeypatch
):
    output = tmp_path / "out"
    config = sample_config(
        sample_dir, bundle_dir, output, date=SAMPLE_DATE, runtime="litert", lease_expiry_hours=EXPIRY_HOURS
    )
    refused, taken, real_acquire = [], [], lease.acquire

    def acquire_and_keep(*args, **kwargs):  # the lease as the first run took it, before any renewal
        taken.append(real_acquire(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(lease, "acquire", acquire_and_keep)

    def second_run_asks_when_the_first_lease_would_have_lapsed():
        monkeypatch.setattr(lease, "acquire", real_acquire)
        [first] = taken
        try:
            lease.acquire(_lease_folder(output), "second", first.started_at, 3600, now=first.expires_at + 0.1)
        except lease.LeaseHeld as e:
            refused.append(str(e))

    pipeline = RunWhileRenewed(renewed, second_run_asks_when_the_first_lease_would_have_lapsed)
    assert launcher.execute(config, [SAMPLE_DATE], [], test_pipeline=pipeline) == 0
    assert pipeline.saw_renewal  # before run() returned
    assert refused and "is being written by run" in refused[0]
    check = check_partition(str(output / f"dt={SAMPLE_DATE}"))
    assert check.complete, check.message
    assert lease.current(_lease_folder(output)).released


def test_a_run_that_stops_renewing_loses_the_day_and_publishes_nothing(sample_dir, bundle_dir, tmp_path, renewed):
    """The twin: once a renewal is older than the expiry (a run hung for longer), the day is another run's, and the
    first's commit refuses it."""
    output = tmp_path / "out"
    config = sample_config(
        sample_dir, bundle_dir, output, date=SAMPLE_DATE, runtime="litert", lease_expiry_hours=EXPIRY_HOURS
    )

    def second_run_takes_the_day_an_hour_later():
        held = lease.current(_lease_folder(output))
        lease.acquire(_lease_folder(output), "second", held.modified_at, 3600, now=held.expires_at + 3600)

    pipeline = RunWhileRenewed(renewed, second_run_takes_the_day_an_hour_later)
    assert launcher.execute(config, [SAMPLE_DATE], [], test_pipeline=pipeline) == 1
    assert pipeline.saw_renewal
    assert not (output / f"dt={SAMPLE_DATE}" / "_SUCCESS").exists()
    holder = lease.current(_lease_folder(output))
    assert holder.run_id == "second" and not holder.released


def test_a_job_keeps_its_leases_from_its_first_stage_the_id_pass_before_any_row_is_scored(
    sample_dir, bundle_dir, tmp_path, monkeypatch
):
    """A --no-wait job has no launcher renewing its leases: the job renews them itself (lease.KeepLeases), from the
    id pass on (it runs before any row is scored, and on a large backfill it is not short) and then as it scores.
    What the job's lease keeper sees, in order: the id pass's tables first (they carry the file and row index), the
    scores after them. The twin is in the same run: the scored batches still go through it."""
    seen = []
    real = lease.KeepLeases.__call__

    def watch(self, element):
        names = element[1].schema.names
        seen.append("ids" if FILE_INDEX in names else "scores" if SCORE in names else "other")
        return real(self, element)

    monkeypatch.setattr(lease.KeepLeases, "__call__", watch)
    config = sample_config(sample_dir, bundle_dir, tmp_path / "out", date=SAMPLE_DATE, runtime="litert")
    assert launcher.execute(config, [SAMPLE_DATE], [], test_pipeline=beam.Pipeline(runner=FnApiRunner())) == 0
    assert seen and seen[0] == "ids", seen
    assert "scores" in seen and seen.index("scores") > seen.index("ids")
    assert "other" not in seen
