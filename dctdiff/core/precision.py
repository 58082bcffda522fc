"""Inference precision of the networks (U-ViT sampling, Inception features): bf16 autocast on CUDA by default."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def resolved_precision(device: torch.device | str, precision: Precision = "auto") -> str:
    """What ``precision`` runs as on ``device``: "bf16" for "bf16", and for "auto" on CUDA; else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    auto = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return auto if precision == "auto" else precision


def autocast(device: torch.device | str, precision: Precision = "auto") -> AbstractContextManager:
    """bf16 autocast where ``resolved_precision`` is "bf16", else float32. On a CPU, "bf16" runs CPU
    autocast (slow; for tests of the GPU path)."""
    if resolved_precision(device, precision) == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
