"""The counter-based draws against a pure-Python SplitMix64 + Box-Muller reference; batch-split invariance."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from dctdiff.training.randomness import draw_step

MASK = (1 << 64) - 1


def reference_bits(key: int, counter: int) -> int:
    """SplitMix64 output number ``counter`` of the stream seeded with ``key`` (uint64 Python ints)."""
    z = (key + (counter + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_draws(seed: int, step: int, sample_id: str, elements: int) -> tuple[list[float], list[float]]:
    """(t, flip uniform, drop uniform) and the first ``elements`` normals of one sample, in float64."""
    key = int.from_bytes(hashlib.blake2b(f"{seed}:{step}:{sample_id}".encode(), digest_size=8).digest(), "little")
    scalars = [(reference_bits(key, c) >> 40) / 2**24 for c in range(3)]
    normals = []
    for c in range(3, 3 + (elements + 1) // 2):
        bits = reference_bits(key, c)
        radius = math.sqrt(-2 * math.log(((bits >> 40) + 1) / 2**24))
        angle = 2 * math.pi * (((bits >> 16) & 0xFFFFFF) / 2**24)
        normals += [radius * math.cos(angle), radius * math.sin(angle)]
    return scalars, normals[:elements]


def test_draws_match_the_reference():
    ids = ["img-0", "img-1", "cat/7"]
    draws = draw_step(3, 11, ids, (4, 3))
    for row, sample_id in enumerate(ids):
        (t, flip, drop), normals = reference_draws(3, 11, sample_id, 12)
        assert draws.t[row].item() == t and draws.drop[row].item() == drop and draws.flip[row].item() == (flip < 0.5)
        torch.testing.assert_close(draws.eps[row].reshape(-1).double(), torch.tensor(normals, dtype=torch.float64), rtol=0, atol=2e-6)


def test_draws_are_pinned_and_independent_of_the_batch_split():
    ids = ["a", "b", "c", "d"]
    whole = draw_step(0, 5, ids, (64, 24))
    parts = [draw_step(0, 5, ids[:2], (64, 24)), draw_step(0, 5, ids[2:], (64, 24))]
    for name in ("t", "eps", "flip", "drop"):
        torch.testing.assert_close(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name), rtol=0, atol=0)
    # the stream itself (version 2): a change here breaks exact resume of running jobs
    assert (whole.t * 2**24).tolist() == [1770990, 12577201, 4840616, 13551658]
    assert whole.flip.tolist() == [False, False, True, True]
    assert draw_step(0, 6, ids, (64, 24)).t.tolist() != whole.t.tolist()  # new draws every step


def test_normals_have_unit_moments():
    eps = draw_step(1, 0, [f"i{k}" for k in range(512)], (64, 24)).eps.double()  # 786432 draws
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.005
    assert abs((eps**4).mean().item() - 3) < 0.05  # Gaussian kurtosis


@pytest.mark.gpu
def test_cuda_draws_match_the_cpu_draws():
    """The same stream on the GPU: integer ops exact, the Box-Muller normals within float32 rounding."""
    ids = [f"img-{i}" for i in range(256)]
    cpu, cuda = draw_step(0, 9, ids, (64, 24)), draw_step(0, 9, ids, (64, 24), device="cuda")
    for name in ("t", "flip", "drop"):
        assert torch.equal(getattr(cuda, name).cpu(), getattr(cpu, name))
    torch.testing.assert_close(cuda.eps.cpu(), cpu.eps, rtol=0, atol=1e-5)
