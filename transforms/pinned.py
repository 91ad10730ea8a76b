"""The run's model bundle, pinned to the launcher's version and loaded once per worker process for both stages."""

from __future__ import annotations

import threading

from apache_beam.utils import shared

from model.bundle import BundleError, check_bundle, load_bundle, open_runtime
from model.runtime import LITERT, TENSORFLOW, limit_tensorflow_threads


class LoadedBundle:
    """What one worker process holds of the run's bundle: its artifacts and its model runtimes.

    The litert runtime is opened from the bundle's files without TensorFlow; the tensorflow runtime loads (and
    fully validates) the Keras model the first time it is asked for.
    """

    def __init__(self, bundle):
        self.bundle = bundle
        self.model_version = bundle.model_version
        self._runtimes: dict = {}
        self._lock = threading.Lock()

    def runtime(self, name: str = LITERT, batch_size: int = 4096, jit_compile: bool = True, threads: int = 1):
        with self._lock:  # DoFn instances on several threads share this object
            key = (name, batch_size, jit_compile, threads)
            if key not in self._runtimes:
                if name == TENSORFLOW and not hasattr(self.bundle, "model"):
                    limit_tensorflow_threads()
                    self.bundle = load_bundle(self.bundle.local_dir)
                self._runtimes[key] = open_runtime(self.bundle, name, batch_size, jit_compile, threads)
            return self._runtimes[key]


class PinnedBundle:
    """The run's model bundle, pinned to the content version the launcher resolved.

    Loaded once per worker process (one shared.Shared handle, pickled into both Featurize and ScoreReviews, so
    both get the same object) and checked against the planned version: a bundle replaced during the run fails the
    run, naming both versions and the path, instead of mixing vocabularies and models in one partition.
    """

    def __init__(self, model_dir: str, model_version: str | None = None):
        self.model_dir = model_dir
        self.model_version = model_version
        self._shared = shared.Shared()

    def _load(self) -> LoadedBundle:
        bundle = check_bundle(self.model_dir)
        if self.model_version is not None and bundle.model_version != self.model_version:
            raise BundleError(
                f"model bundle {self.model_dir}: version {bundle.model_version} is not the {self.model_version} "
                f"this run was planned with (the bundle changed during the run; use immutable version folders)"
            )
        return LoadedBundle(bundle)

    def acquire(self) -> LoadedBundle:
        return self._shared.acquire(self._load, tag=f"bundle:{self.model_dir}:{self.model_version}")
