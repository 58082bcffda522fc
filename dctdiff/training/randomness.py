"""Counter-based per-sample randomness of a training step, generated on the device in a few tensor ops.

Every draw of a sample (t, flip, label drop, eps) is a pure function of (seed, step, sample id, element
index): a run's losses do not depend on how the global batch is split over workers, and a resumed run
repeats the uninterrupted run (the RNG "state" is just (seed, step)).

Nothing is done per sample in Python. A sample id is hashed once per batch, vectorised (``id_keys``): its
UTF-32 code points, two per 64-bit word, each word mixed with its position, summed, mixed again. A step
salts these keys with (seed, step) and expands them into the SplitMix64 stream
``mix(key + (counter + 1) * GOLDEN)`` (Steele et al. 2014, ``dctdiff.core.counter_rng``) with wrapping int64
arithmetic; its outputs become uniforms (top 24 bits) and normals (Box-Muller, both branches). Version 3 of
the stream: runs started before it (version 2 hashed every id with blake2b in a Python loop) do not resume
bit-exactly across the change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dctdiff.core.counter_rng import GOLDEN, MIX1, normals, salted, signed, splitmix64, stream_bits, uniform_24

SCALAR_DRAWS = 3  # counters 0..2: t, flip, label drop; eps starts at counter 3


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
    mixed = splitmix64(words + positions * signed(GOLDEN))  # [n, w/2]
    return splitmix64(torch.where(words != 0, mixed, 0).sum(dim=1))  # [n]


def step_keys(keys: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The keys [n] of the samples at (seed, step): the id keys salted with the seed, then the step."""
    return salted(salted(keys, seed, GOLDEN), step + 1, MIX1)


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
    eps = normals(keys[:, 0], math.prod(token_shape), first_counter=SCALAR_DRAWS)  # [n, L*D]
    return StepDraws(scalars[:, 0], eps.reshape(len(keys), *token_shape), scalars[:, 1] < 0.5, scalars[:, 2])
