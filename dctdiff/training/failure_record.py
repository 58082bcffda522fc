"""The record of a run's deterministic failure, left by a worker for the driver: a non-finite loss, or an
exception raised before the first step of a fit (an attempt) completed.

Ray Train retries a worker that raised and its Result keeps only checkpointed metrics. For a non-finite
loss rank 0 writes the error to the run folder and every worker ends its loop normally
(``worker_loop.report_failure``); for a first-step exception the raising rank writes it before raising,
and ``no_retry.StopOnRecordedFailure`` ends the run instead of retrying it. The driver raises the
recorded error after the fit (``train_job``), so the job prints it once.
"""

from __future__ import annotations

from dctdiff.infra import storage
from dctdiff.training.step_metrics import NonFiniteLossError

FAILURE_FILE = "failure.json"  # in the run folder: the deterministic failure the workers stopped on


class FirstStepError(RuntimeError):
    """An exception a rank raised before the first step of a fit completed: the same config, data and
    counter-based draws meet it again on every attempt, so it is not retried."""

    @classmethod
    def of(cls, error: BaseException, rank: int) -> FirstStepError:
        """The one-line error for ``error``, raised by ``rank`` before its first step completed."""
        detail = " ".join(str(error).split()) or "no message"
        return cls(
            f"rank {rank} failed before the first training step of this attempt completed, with "
            f"{type(error).__name__}: {detail}; not retried, as every attempt would fail the same way"
        )


def record_failure(uri: str, error: NonFiniteLossError | FirstStepError) -> None:
    """A worker: leave the error for the driver (the last writer wins when several ranks fail)."""
    step = error.step if isinstance(error, NonFiniteLossError) else None
    storage.write_json(uri, {"kind": type(error).__name__, "message": str(error), "step": step})


def has_failure(uri: str) -> bool:
    """Whether a worker recorded a deterministic failure."""
    return storage.exists(uri)


def clear_failure(uri: str) -> None:
    """Forget a recorded failure: the driver before a run (or its resumption) starts, or the controller
    when the failure came with a lost worker (``no_retry``)."""
    if storage.exists(uri):
        storage.delete(uri)


def raise_recorded_failure(uri: str) -> None:
    """The driver, after the run: raise the error the workers stopped on, if any."""
    if storage.exists(uri):
        record = storage.read_json(uri)
        if record["kind"] == FirstStepError.__name__:
            raise FirstStepError(record["message"])
        raise NonFiniteLossError(record["message"], record["step"])
