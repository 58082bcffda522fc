"""A Ray Train callback that ends a run, instead of retrying it, when a worker recorded a deterministic
failure before raising (``failure_record``; docs/ARCHITECTURE.md, "Ray, MLflow and storage facts").

It runs in the Ray Train controller. Ray Train 2.60 routes an exception raised in a callback through its
failure policy as a ``ControllerError``, which it does not retry: the worker group is shut down and
``TrainController.fit`` raises, and the driver then raises the recorded error (``train_job.launch``).
"""

from __future__ import annotations

import logging
from typing import Any

import ray.exceptions
import ray.train

from dctdiff.training.failure_record import clear_failure, has_failure

log = logging.getLogger(__name__)


class RecordedFailure(RuntimeError):
    """Raised in the controller to stop the run; the driver replaces it with the recorded error."""


class StopOnRecordedFailure(ray.train.UserCallback):
    """Stop the run when a worker's exception came with a recorded deterministic failure."""

    def __init__(self, failure_file: str) -> None:
        self.failure_file = failure_file

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Raise RecordedFailure if a failure was recorded, unless a worker died: then its peers' errors
        (a closed connection in a collective) are no evidence, and Ray Train restarts the group as usual."""
        if not has_failure(self.failure_file):
            return
        if any(isinstance(error, ray.exceptions.RayActorError) for error in worker_exceptions.values()):
            clear_failure(self.failure_file)
            return
        raise RecordedFailure(f"a worker recorded a deterministic failure in {self.failure_file}; not retried")
