"""Counter-based random numbers as tensor ops on any device: SplitMix64 streams keyed by 64-bit integers.

A draw is a pure function of (key, counter): no generator state, nothing on the host, the same bits on
every device (integer ops are exact; the Box-Muller normals agree to float32 rounding). The training
step's draws (``dctdiff.training.randomness``) and the samplers' per-image noise (``SeedNoise``) are both
streams of this kind (docs/ARCHITECTURE.md, "Sampling and evaluation").

SplitMix64 (Steele et al. 2014): output ``counter`` of the stream of ``key`` is
``mix(key + (counter + 1) * GOLDEN)``, in wrapping int64 arithmetic (the uint64 bits of the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser on int64 bit patterns (any shape), in place; wraps like uint64."""
    x.bitwise_xor_(shift_right(x, 30)).mul_(signed(MIX1))
    x.bitwise_xor_(shift_right(x, 27)).mul_(signed(MIX2))
    return x.bitwise_xor_(shift_right(x, 31))


def salted(keys: torch.Tensor, value: int, multiplier: int) -> torch.Tensor:
    """New keys [n] from ``keys`` [n] and an integer ``value`` (a seed, a step, a draw number)."""
    return splitmix64(keys + torch.full_like(keys, value).mul_(signed(multiplier)))


def stream_bits(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """64 random bits for every (key, counter): keys [n, 1], counters [c] int64 -> [n, c] int64."""
    return splitmix64(keys + (counters + 1) * signed(GOLDEN))


def uniform_24(bits: torch.Tensor) -> torch.Tensor:
    """Top 24 bits -> float32 uniforms in [0, 1) (exact in float32)."""
    return shift_right(bits, 40).to(torch.float32) * 2.0**-24


def normal_pairs(bits: torch.Tensor) -> torch.Tensor:
    """Box-Muller: int64 bits [n, c] -> standard normals [n, 2c] (cos branch, then sin branch per counter)."""
    u1 = shift_right(bits, 40).add_(1).to(torch.float32).mul_(2.0**-24)  # (0, 1]: log is finite
    u2 = (bits >> 16).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(2.0**-24)  # [0, 1)
    radius = u1.log_().mul_(-2.0).sqrt_()
    # polar: r cos(a) + i r sin(a); as real pairs [n, c, 2] -> [n, 2c], interleaved per counter
    return torch.view_as_real(torch.polar(radius, u2.mul_(2.0 * math.pi))).flatten(-2)


def normals(keys: torch.Tensor, count: int, first_counter: int = 0) -> torch.Tensor:
    """``count`` standard normals per key: keys [n] -> float32 [n, count], from counters
    ``first_counter`` .. ``first_counter + ceil(count / 2) - 1`` (two normals per counter)."""
    counters = torch.arange(first_counter, first_counter + (count + 1) // 2, device=keys.device)  # [ceil(count/2)]
    return normal_pairs(stream_bits(keys[:, None], counters))[:, :count]


class SeedNoise:
    """The sampler's noise of a batch of images, image i from ``seeds[i]`` alone, generated on ``device``.

    Draw 0 is the initial x_1, draw k >= 1 the noise of stochastic step k; draws are independent
    streams (the image key salted with the draw number). One small copy of the seeds per batch; every draw
    after it is device work only (no host generator, no host -> device copy, no sync).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str) -> None:
        seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64)  # [n]
        self.keys = splitmix64(seeds.mul_(signed(GOLDEN))).to(device)  # [n] image keys

    def __call__(self, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
        """float32 [n, *shape] standard normals of draw number ``draw``."""
        keys = salted(self.keys, draw + 1, MIX1)  # [n]
        return normals(keys, math.prod(shape)).reshape(len(keys), *shape)
