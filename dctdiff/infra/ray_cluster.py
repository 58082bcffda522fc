"""Connecting to Ray the same way from a laptop, a test and a cluster job."""

from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"


def keep_ray_on_loopback() -> None:
    """Make Ray processes started from here advertise and listen on 127.0.0.1 only (DESIGN.md §9)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to a Ray cluster, or start a local one bound to loopback.

    ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``) connects to a running cluster; without
    it a local Ray starts on 127.0.0.1 with its dashboard on loopback (Ray Train V2 needs the dashboard
    for clean-up, DESIGN.md §9). An already initialised Ray is reused.
    """
    import ray

    keep_ray_on_loopback()
    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, **kwargs)
    return ray.init(
        address="local",  # never join another cluster recorded on this machine
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        _node_ip_address=LOOPBACK,
        **kwargs,
    )


# CPUs left free for Ray Data's read tasks: if workers take every CPU, reading stalls and the job
# waits forever without an error (DESIGN.md §9).
DATA_CPUS = 1.0


class ResourceError(RuntimeError):
    """The cluster cannot hold the requested workers."""


def plan_worker_cpus(
    workers: int,
    cluster_cpus: float,
    cluster_gpus: float = 0.0,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float = 0.0,
) -> float:
    """CPUs per worker (training workers or sampling actors) so that they plus Ray Data fit the cluster.

    ``cpus_per_worker=None`` takes up to one CPU each, sharing what is left after ``DATA_CPUS``.
    Raises ResourceError, saying what to change, when the request cannot fit.
    """
    if workers < 1:
        raise ResourceError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker * workers > cluster_gpus:
        raise ResourceError(
            f"{workers} workers x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs; the cluster has "
            f"{cluster_gpus:g}. Lower --workers or --gpus-per-worker, or add GPU nodes."
        )
    cpus = cpus_per_worker if cpus_per_worker is not None else min(1.0, (cluster_cpus - DATA_CPUS) / workers)
    if cpus <= 0 or workers * cpus + DATA_CPUS > cluster_cpus + 1e-9:
        raise ResourceError(
            f"{workers} workers need {workers} x {cpus:g} CPUs plus {DATA_CPUS:g} CPU for Ray Data, but the cluster "
            f"has {cluster_cpus:g} CPUs; the job would wait forever. Lower --workers or --cpus-per-worker, or add nodes."
        )
    return cpus
