"""dctdiff: image diffusion in the block-DCT space (Ning et al., DCTdiff, ICML 2025) on Ray."""

import os

# Ray reads this when it is imported: a Ray started from here (no RAY_ADDRESS: not a cluster job) then
# advertises and listens on 127.0.0.1 only (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts"). Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 to opt out.
if "RAY_ADDRESS" not in os.environ:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from dctdiff.core.codec import DCTCodec, PixelCodec, zigzag_order

__all__ = ["DCTCodec", "PixelCodec", "zigzag_order"]
__version__ = "0.1.0"
