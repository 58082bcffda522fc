"""Counter-based per-sample randomness of a training step, generated on the device in a few tensor ops.

Every draw of a sample (t, flip, label drop, eps) is a pure function of (seed, step, sample id, element
index): a run's losses do not depend on how the global batch is split over workers, and a resumed run
repeats the uninterrupted run (the RNG "state" is just (seed, step)).

Nothing is done per sample in Python. A sample id is hashed once per batch, vectorised (``id_keys``): its
UTF-32 code points, two per 64-bit word, each word mixed with its position, summed, mixed again. A step
salts these keys with (seed, step) and expands them into the SplitMix64 stream
``mix(key + (counter + 1) * GOLDEN)`` (Steele et al. 2014) with wrapping int64 arithmetic; its outputs become
uniforms (top 24 bits) and normals (Box-Muller, both branches). Version 3 of the stream: runs started before
it (version 2 hashed every id with blake2b in a Python loop) do not resume bit-exactly across the change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
SCALAR_DRAWS = 3  # counters 0..2: t, flip, label drop; eps starts at counter 3


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser on int64 bit patterns (any shape), in place; wraps like uint64."""
    x.bitwise_xor_(_shift_right(x, 30)).mul_(_signed(MIX1))
    x.bitwise_xor_(_shift_right(x, 27)).mul_(_signed(MIX2))
    return x.bitwise_xor_(_shift_right(x, 31))


def id_keys(ids: Sequence[str] | np.ndarray) -> torch.Tensor:
    """64-bit keys (int64 [n]) of the sample ids, independent of the batch they come in (no Python loop).

    The ids' code points [n, w] (zero-padded to the longest id) are packed two per word [n, ceil(w/2)];
    each non-zero word is mixed with its position and the mixes are summed: padding adds nothing.
    """
    points = np.asarray(ids).astype(str)  # '<U{w}': UTF-32 code points, zero-padded
    width = points.dtype.itemsize // 4
    codes = np.zeros((len(points), width + width % 2), dtype=np.uint32)  # [n, even w]
    codes[:, :width] = points.view(np.uint32).reshape(len(points), width)
    words = torch.from_numpy(codes.view(np.int64))  # [n, w/2]: low half the even, high half the odd point
    positions = torch.arange(1, words.shape[1] + 1, dtype=torch.int64)
    mixed = splitmix64(words + positions * _signed(GOLDEN))  # [n, w/2]
    return splitmix64(torch.where(words != 0, mixed, 0).sum(dim=1))  # [n]


def step_keys(keys: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The keys [n] of the samples at (seed, step): the id keys salted with the seed, then the step."""
    salted = splitmix64(keys + torch.full_like(keys, seed).mul_(_signed(GOLDEN)))
    return splitmix64(salted + torch.full_like(keys, step + 1).mul_(_signed(MIX1)))


def stream_bits(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """64 random bits for every (key, counter): keys [n, 1], counters [c] int64 -> [n, c] int64."""
    return splitmix64(keys + (counters + 1) * _signed(GOLDEN))


def uniform_24(bits: torch.Tensor) -> torch.Tensor:
    """Top 24 bits -> float32 uniforms in [0, 1) (exact in float32)."""
    return _shift_right(bits, 40).to(torch.float32) * 2.0**-24


def normal_pairs(bits: torch.Tensor) -> torch.Tensor:
    """Box-Muller: int64 bits [n, c] -> standard normals [n, 2c] (cos branch, then sin branch per counter)."""
    u1 = _shift_right(bits, 40).add_(1).to(torch.float32).mul_(2.0**-24)  # (0, 1]: log is finite
    u2 = (bits >> 16).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(2.0**-24)  # [0, 1)
    radius = u1.log_().mul_(-2.0).sqrt_()
    # polar: r cos(a) + i r sin(a); as real pairs [n, c, 2] -> [n, 2c], interleaved per counter
    return torch.view_as_real(torch.polar(radius, u2.mul_(2.0 * math.pi))).flatten(-2)


@dataclass
class StepDraws:
    """Per-sample random draws of one step: t [n], eps [n, L, D], flip [n] bool, drop [n] uniform."""

    t: torch.Tensor
    eps: torch.Tensor
    flip: torch.Tensor
    drop: torch.Tensor


def draw_step(
    seed: int, step: int, keys: torch.Tensor, token_shape: tuple[int, int], device: torch.device | str = "cpu"
) -> StepDraws:
    """Counter-based draws (float32, on ``device``) at ``step`` for the samples whose ``id_keys`` are ``keys``."""
    keys = step_keys(keys.to(device, non_blocking=True), seed, step)[:, None]  # [n, 1]
    scalars = uniform_24(stream_bits(keys, torch.arange(SCALAR_DRAWS, device=device)))  # [n, 3]
    elements = math.prod(token_shape)
    counters = torch.arange(SCALAR_DRAWS, SCALAR_DRAWS + (elements + 1) // 2, device=device)  # [ceil(LD/2)]
    eps = normal_pairs(stream_bits(keys, counters))[:, :elements]  # [n, L*D]
    return StepDraws(scalars[:, 0], eps.reshape(len(keys), *token_shape), scalars[:, 1] < 0.5, scalars[:, 2])
