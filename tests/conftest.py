"""Shared test fixtures."""

from __future__ import annotations

import pytest

from dctdiff.infra.ray_cluster import keep_ray_on_loopback

# Ray reads this when it is first imported: set it before any test module imports ray (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts").
keep_ray_on_loopback()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` run only where CUDA is available (they never decide a CPU build)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
