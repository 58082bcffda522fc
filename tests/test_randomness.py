"""The counter-based draws against a pure-Python reference (id hash, SplitMix64, Box-Muller); batch-split invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dctdiff.training.randomness import draw_step, id_keys
from tests.counter_reference import GOLDEN, MASK, MIX1, mix, reference_bits, reference_normals


def reference_id_key(sample_id: str) -> int:
    """The id's code points two per word (low, high), each word mixed with its 1-based position, summed."""
    points = [ord(c) for c in sample_id] + [0] * (len(sample_id) % 2)
    words = [points[i] | points[i + 1] << 32 for i in range(0, len(points), 2)]
    return mix(sum(mix((w + (i + 1) * GOLDEN) & MASK) for i, w in enumerate(words)) & MASK)


def reference_key(seed: int, step: int, sample_id: str) -> int:
    """The id key salted with the seed, then the step."""
    salted = mix((reference_id_key(sample_id) + seed * GOLDEN) & MASK)
    return mix((salted + (step + 1) * MIX1) & MASK)


def reference_draws(seed: int, step: int, sample_id: str, elements: int) -> tuple[list[float], list[float]]:
    """(t, flip uniform, drop uniform) and the first ``elements`` normals of one sample, in float64."""
    key = reference_key(seed, step, sample_id)
    scalars = [(reference_bits(key, c) >> 40) / 2**24 for c in range(3)]
    return scalars, reference_normals(key, elements, first_counter=3)


def test_id_keys_match_the_reference_and_ignore_the_batch_width():
    ids = ["img-0", "cat/7", "a", "", "photos/\u00e9t\u00e9-\u65e5\u672c", "x" * 41]
    expected = [reference_id_key(i) for i in ids]
    assert [k & MASK for k in id_keys(ids).tolist()] == expected
    assert [k & MASK for k in id_keys(np.array(ids, dtype=object)).tolist()] == expected  # Ray Data's strings
    assert [id_keys([i]).item() & MASK for i in ids] == expected  # alone: a narrower padding
    assert len(set(expected)) == len(ids)


def test_draws_match_the_reference():
    ids = ["img-0", "img-1", "cat/7"]
    draws = draw_step(3, 11, id_keys(ids), (4, 3))
    for row, sample_id in enumerate(ids):
        (t, flip, drop), normals = reference_draws(3, 11, sample_id, 12)
        assert draws.t[row].item() == t and draws.drop[row].item() == drop and draws.flip[row].item() == (flip < 0.5)
        torch.testing.assert_close(
            draws.eps[row].reshape(-1).double(), torch.tensor(normals, dtype=torch.float64), rtol=0, atol=2e-6
        )


def test_draws_are_pinned_and_independent_of_the_batch_split():
    ids = ["a", "b", "c", "d"]
    whole = draw_step(0, 5, id_keys(ids), (64, 24))
    parts = [draw_step(0, 5, id_keys(ids[:2]), (64, 24)), draw_step(0, 5, id_keys(ids[2:]), (64, 24))]
    for name in ("t", "eps", "flip", "drop"):
        torch.testing.assert_close(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name), rtol=0, atol=0)
    # the stream itself (version 3): a change here breaks exact resume of running jobs
    assert (whole.t * 2**24).tolist() == [6789538, 7034274, 9808061, 3357405]
    assert whole.flip.tolist() == [False, False, True, False]
    assert draw_step(0, 6, id_keys(ids), (64, 24)).t.tolist() != whole.t.tolist()  # new draws every step


def test_normals_have_unit_moments():
    eps = draw_step(1, 0, id_keys([f"i{k}" for k in range(512)]), (64, 24)).eps.double()  # 786432 draws
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.005
    assert abs((eps**4).mean().item() - 3) < 0.05  # Gaussian kurtosis


@pytest.mark.gpu
def test_cuda_draws_match_the_cpu_draws():
    """The same stream on the GPU: integer ops exact, the Box-Muller normals within float32 rounding."""
    keys = id_keys([f"img-{i}" for i in range(256)])
    cpu, cuda = draw_step(0, 9, keys, (64, 24)), draw_step(0, 9, keys, (64, 24), device="cuda")
    for name in ("t", "flip", "drop"):
        assert torch.equal(getattr(cuda, name).cpu(), getattr(cpu, name))
    torch.testing.assert_close(cuda.eps.cpu(), cpu.eps, rtol=0, atol=1e-5)
