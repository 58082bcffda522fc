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
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        _node_ip_address=LOOPBACK,
        **kwargs,
    )
