"""The record of a run's deterministic failure (a non-finite loss), left by rank 0 for the driver.

Ray Train's Result keeps only checkpointed metrics, and a worker that raised would be retried, so rank 0
writes the error to the run folder and every worker ends its loop normally (``worker_loop.report_failure``);
the driver raises it after the fit (``launcher``).
"""

from __future__ import annotations

from dctdiff.infra import storage
from dctdiff.training.step_metrics import NonFiniteLossError

FAILURE_FILE = "non_finite_loss.json"  # in the run folder: rank 0's NonFiniteLossError, for the driver


def record_failure(uri: str, error: NonFiniteLossError) -> None:
    """Rank 0: leave the error for the driver (Ray Train's Result keeps only checkpointed metrics)."""
    storage.write_json(uri, {"message": str(error), "step": error.step})


def clear_failure(uri: str) -> None:
    """The driver, before a run (or its resumption) starts: forget an earlier attempt's error."""
    if storage.exists(uri):
        storage.delete(uri)


def raise_recorded_failure(uri: str) -> None:
    """The driver, after the run: raise the NonFiniteLossError the workers stopped on, if any."""
    if storage.exists(uri):
        record = storage.read_json(uri)
        raise NonFiniteLossError(record["message"], record["step"])
