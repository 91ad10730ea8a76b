"""The run's model bundle, pinned to the launcher's version and loaded once per worker process for both stages."""

from __future__ import annotations

from apache_beam.utils import shared

from model.bundle import BundleError, ModelBundle, check_bundle


class PinnedBundle:
    """The run's model bundle, pinned to the content version the launcher resolved.

    Loaded once per worker process (one shared.Shared handle, pickled into both Featurize and ScoreReviews, so
    both get the same ModelBundle, and with it the same model runtimes) and checked against the planned version: a
    bundle replaced during the run fails the run, naming both versions and the path, instead of mixing vocabularies
    and models in one partition.
    """

    def __init__(self, model_dir: str, model_version: str | None = None):
        self.model_dir = model_dir
        self.model_version = model_version
        self._shared = shared.Shared()

    def _load(self) -> ModelBundle:
        bundle = check_bundle(self.model_dir)
        if self.model_version is not None and bundle.model_version != self.model_version:
            raise BundleError(
                f"model bundle {self.model_dir}: version {bundle.model_version} is not the {self.model_version} "
                f"this run was planned with (the bundle changed during the run; use immutable version folders)"
            )
        return bundle

    def acquire(self) -> ModelBundle:
        return self._shared.acquire(self._load, tag=f"bundle:{self.model_dir}:{self.model_version}")
