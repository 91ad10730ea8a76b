"""A run's leases: one set per partition (the scopes its publisher fences), taken at start-up before anything is
written, renewed while the pipeline runs, given back when the run ends or is stopped (pipeline/publish/lease.py)."""

from __future__ import annotations

import logging
import threading

from pipeline.publish import lease
from pipeline.run.plan import RunPlan

_LOG = logging.getLogger("sentiment-score")


def take(plan: RunPlan, take_over: bool) -> dict[str, dict[str, int]]:
    """Takes each partition's leases: those of what its publisher publishes (a table's day, a folder's real path),
    so runs that reach it through different outputs exclude each other. Returns {partition: held}; raises LeaseHeld or
    LeaseError (or whatever stopped it) after giving back what it took."""
    taken: dict[str, dict[str, int]] = {}
    try:
        for partition in plan.partitions:
            taken[partition] = lease.acquire_all(
                plan.publisher.lease_scopes(partition),
                plan.run_id,
                plan.started_at,
                plan.lease_expiry_seconds,
                take_over,
            )
    except BaseException:  # held by another run, unreadable, or SIGTERM / Ctrl-C while taking them
        release(plan, list(taken), taken)
        raise
    return taken


def release(plan: RunPlan, partitions: list[str], held: dict[str, dict[str, int]] | None = None) -> None:
    held = plan.leases if held is None else held
    for partition in partitions:
        try:
            lease.release_all(held.get(partition, {}), plan.run_id)
        except Exception as e:  # the lease then lapses at its expiry
            _LOG.warning("could not release the lease of %s: %s", plan.publisher.name(partition), e)


def renew(plan: RunPlan, partitions: list[str]) -> None:
    for partition in partitions:
        name = plan.publisher.name(partition)
        lease.renew_all(plan.leases.get(partition, {}), plan.run_id, plan.lease_expiry_seconds, name)


def keep_renewed(plan: RunPlan, stop: threading.Event) -> None:
    """Renews the running chunk's leases every quarter of their expiry from before the pipeline starts until it
    ends (a local runner's run() blocks until the job is done), so a healthy run never lapses however long it
    takes; the pipeline renews each partition itself before its commit too. A partition this run published or
    refused has given its leases back and is renewed no more."""
    renewing = list(plan.partitions)
    while renewing and not stop.wait(plan.lease_expiry_seconds / 4):
        for partition in list(renewing):
            try:
                renew(plan, [partition])
            except (lease.LeaseHeld, lease.LeaseError) as e:  # the commit's fence refuses what was lost
                renewing.remove(partition)
                if not lease.released_by(plan.leases.get(partition, {}), plan.run_id):
                    _LOG.warning("could not renew a lease: %s", e)
