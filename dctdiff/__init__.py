"""dctdiff: image diffusion in the block-DCT space (Ning et al., DCTdiff, ICML 2025) on Ray."""

import os


def keep_ray_on_loopback() -> None:
    """Make Ray processes started from here advertise and listen on 127.0.0.1 only, and send nothing to
    other hosts: no Ray usage statistics, no MLflow telemetry (docs/ARCHITECTURE.md, "Ray, MLflow and
    storage facts"). The one place these are set: ``import dctdiff`` calls it, before any dctdiff module
    imports Ray (which reads its loopback setting at import), and ``init_ray`` again. Values already set
    win; under ``RAY_ADDRESS`` (a cluster job) Ray keeps its own addresses. Set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 to opt out of loopback."""
    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


keep_ray_on_loopback()

from dctdiff.core.codec import DCTCodec, PixelCodec, zigzag_order  # noqa: E402  (after the environment)

__all__ = ["DCTCodec", "PixelCodec", "keep_ray_on_loopback", "zigzag_order"]
__version__ = "0.1.0"
