"""Inference precision of the networks (U-ViT sampling, Inception features): bf16 autocast on CUDA by default."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def autocast(device: torch.device | str, precision: Precision = "auto") -> AbstractContextManager:
    """bf16 autocast for ``precision`` "bf16", and for "auto" on CUDA; "fp32" (and "auto" on a CPU) runs
    in float32. On a CPU, "bf16" runs CPU autocast (slow; for tests of the GPU path)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
