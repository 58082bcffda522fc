"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

import pytest

from dctdiff.infra.ray_cluster import keep_ray_on_loopback

# Ray reads this when it is first imported: set it before any test module imports ray (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts").
keep_ray_on_loopback()


# What the pipeline tests import; a GPU machine may have only PyTorch and pytest (README "Performance").
PIPELINE_PACKAGES = ("ray", "mlflow", "pyarrow")
_MISSING_PACKAGES = [name for name in PIPELINE_PACKAGES if importlib.util.find_spec(name) is None]


def pytest_ignore_collect(collection_path, config) -> bool | None:
    """Without Ray, MLflow or pyarrow only the test modules that hold ``gpu`` tests are collected (they
    import none of the three), so ``pytest -m gpu`` runs on a machine with only PyTorch and pytest."""
    if _MISSING_PACKAGES and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return "pytest.mark.gpu" not in collection_path.read_text()
    return None


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` run only where CUDA is available (they never decide a CPU build)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_forks_under_ray: list[str] = []


def _note_a_fork_under_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        _forks_under_ray.append(os.environ.get("PYTEST_CURRENT_TEST", "?"))


# A fork of a process that runs a Ray driver (multiprocessing's default "fork" context, e.g. a bare
# mp.Manager()) can leave the parent's GCS client waiting forever: after a training run, the next
# ray.cluster_resources() never returned, and SIGALRM (pytest-timeout) cannot interrupt that wait.
os.register_at_fork(before=_note_a_fork_under_ray)


@pytest.fixture(autouse=True)
def no_fork_under_ray():
    """Fail a test that forked this process while Ray was running: use a "spawn" context instead."""
    yield
    if _forks_under_ray:
        where = _forks_under_ray[0]
        _forks_under_ray.clear()
        pytest.fail(
            f"forked the test process while Ray was running ({where}); use multiprocessing.get_context('spawn')"
        )


RAY_SHUTDOWN_DEADLINE_S = 120
_hard_exit: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop the shared Ray here, with a deadline: ``ray.shutdown`` can wait forever joining its log
    listener thread (seen on a loaded 2-core machine, after all tests had passed), and Ray's atexit hook
    would then hang the run after its results. Past the deadline the process exits at unconfigure."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    stopper = threading.Thread(target=ray.shutdown, daemon=True)
    stopper.start()
    stopper.join(RAY_SHUTDOWN_DEADLINE_S)
    if stopper.is_alive():
        _hard_exit["status"] = int(exitstatus)


def pytest_unconfigure(config) -> None:
    """Exit with the session's status when Ray's shutdown did not return (see pytest_sessionfinish)."""
    if "status" in _hard_exit:
        sys.stderr.write(f"ray.shutdown did not return within {RAY_SHUTDOWN_DEADLINE_S} s; exiting\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_hard_exit["status"])


def _shared_ray():
    """The local Ray the tests share (2 CPUs, loopback only), started unless one is running (a test that
    needs its own cluster may have shut it down). Ray stops it at exit."""
    import ray

    from dctdiff.infra.ray_cluster import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2)
    return ray


@pytest.fixture
def ray_session():
    """The shared local Ray (the ``ray`` module, initialised). ``ray_session.get_runtime_context().gcs_address``
    lets a subprocess driver join it (``RAY_ADDRESS``)."""
    return _shared_ray()


@pytest.fixture(scope="module")
def ray_module():
    """The shared local Ray, for module-scoped fixtures."""
    return _shared_ray()


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory):
    """The small training runs several modules check (tests/small_runs.py), trained once per session."""
    from tests.small_runs import train_small_runs

    _shared_ray()
    return train_small_runs(tmp_path_factory.mktemp("small-runs"))


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test when anything calls ``ray.init``; Ray is as initialised afterwards as before."""
    import ray

    before = ray.is_initialized()

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert ray.is_initialized() == before
