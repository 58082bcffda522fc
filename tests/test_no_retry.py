"""StopOnRecordedFailure, the Ray Train callback that ends a run after a recorded deterministic failure
(the run itself: tests/test_train_pipeline.py)."""

from __future__ import annotations

import pytest
import ray.exceptions

from dctdiff.training.failure_record import FirstStepError, has_failure, raise_recorded_failure, record_failure
from dctdiff.training.no_retry import RecordedFailure, StopOnRecordedFailure


def test_a_recorded_failure_stops_the_run_and_the_driver_raises_it(tmp_path):
    uri = str(tmp_path / "failure.json")
    callback = StopOnRecordedFailure(uri)
    callback.after_exception(None, {0: ValueError("a worker error without a record: Ray Train retries it")})
    record_failure(uri, FirstStepError.of(ValueError("bad\nvalue"), rank=1))
    with pytest.raises(RecordedFailure, match="not retried"):
        callback.after_exception(None, {1: ValueError("bad value")})
    with pytest.raises(FirstStepError, match="^rank 1 failed before .* with ValueError: bad value; not retried"):
        raise_recorded_failure(uri)


def test_a_lost_worker_clears_the_record_so_ray_train_restarts_the_group(tmp_path):
    """A peer that dies mid-collective makes the survivors raise at their first step too: no evidence."""
    uri = str(tmp_path / "failure.json")
    record_failure(uri, FirstStepError.of(RuntimeError("Connection closed by peer"), rank=0))
    StopOnRecordedFailure(uri).after_exception(None, {0: RuntimeError("closed"), 1: ray.exceptions.ActorDiedError()})
    assert not has_failure(uri)
    raise_recorded_failure(uri)  # nothing to raise
