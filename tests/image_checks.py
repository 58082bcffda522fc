"""Comparisons of uint8 images that went through float arithmetic."""

from __future__ import annotations

import numpy as np


def assert_equal_up_to_rounding(actual: np.ndarray, expected: np.ndarray, max_differing: float = 0.005) -> None:
    """uint8 images computed in float equal up to one grey level, at a few pixels: a value near .5 may
    round either way depending on the batch shape, the thread count or the BLAS (issue #16)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert difference.max(initial=0) <= 1, f"images differ by up to {difference.max()} grey levels"
    assert (difference > 0).mean() <= max_differing, f"{(difference > 0).mean():.2%} of the values differ"
