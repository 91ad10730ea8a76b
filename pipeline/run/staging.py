"""Staging left by dead runs: removed for the partitions whose leases this run holds."""

from __future__ import annotations

import logging
import os

from pipeline.publish.results import control_root
from pipeline.run.plan import RunPlan
from pipeline.storage import basename, delete_tree, is_remote, join, list_paths

_LOG = logging.getLogger("sentiment-score")


def clean_dead_staging(plan: RunPlan, partitions: list[str]) -> None:
    """Removes other runs' staging of the partitions this run holds the lease of: no live run can be writing it.

    Each run stages a partition in its own folder (Publisher.staging_dir), so the cleanup names exactly those
    folders, on every filesystem; a partition whose lease this run does not hold is never touched, so a live run's
    staging is never deleted.
    """
    control = control_root(plan.staging_root)
    current = basename(plan.staging_root)
    staging_dir = plan.publisher.staging_dir
    for partition in partitions:
        folder = basename(staging_dir(control, partition))
        runs = set()
        for path in list_paths(join(staging_dir(join(control, "*"), partition), "**")):
            parts = path[len(control) :].lstrip("/").split("/")
            if len(parts) > 2 and parts[1] == folder and parts[0] != current and not parts[0].startswith("_"):
                runs.add(parts[0])
        for run in sorted(runs):
            try:
                delete_tree(staging_dir(join(control, run), partition))
            except Exception as e:  # tidiness: the next run that holds the lease tries again
                _LOG.warning("could not remove run %s's staging of %s: %s", run, partition or "the output", e)
            if not is_remote(control):
                try:
                    os.rmdir(join(control, run))  # only once a dead run's staging is empty
                except OSError:
                    pass
