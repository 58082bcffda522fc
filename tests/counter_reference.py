"""A pure-Python reference of the counter-based streams (``dctdiff.core.counter_rng``): uint64 Python ints."""

from __future__ import annotations

import math

MASK = (1 << 64) - 1
GOLDEN, MIX1 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9


def mix(z: int) -> int:
    """The SplitMix64 finaliser on a uint64 Python int."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_bits(key: int, counter: int) -> int:
    """SplitMix64 output number ``counter`` of the stream seeded with ``key`` (uint64 Python ints)."""
    return mix((key + (counter + 1) * GOLDEN) & MASK)


def reference_normals(key: int, count: int, first_counter: int = 0) -> list[float]:
    """Box-Muller normals (cos, then sin per counter) of the stream of ``key``, in float64."""
    normals = []
    for c in range(first_counter, first_counter + (count + 1) // 2):
        bits = reference_bits(key, c)
        radius = math.sqrt(-2 * math.log(((bits >> 40) + 1) / 2**24))
        angle = 2 * math.pi * (((bits >> 16) & 0xFFFFFF) / 2**24)
        normals += [radius * math.cos(angle), radius * math.sin(angle)]
    return normals[:count]


def reference_seed_noise(seed: int, draw: int, count: int) -> list[float]:
    """The sampler's draw number ``draw`` of the image of ``seed``: key mix(seed * GOLDEN), salted with draw + 1."""
    image_key = mix((seed * GOLDEN) & MASK)
    return reference_normals(mix((image_key + (draw + 1) * MIX1) & MASK), count)
