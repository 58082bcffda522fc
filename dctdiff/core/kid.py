"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", §4 and appendix).

KID is the squared maximum mean discrepancy between two feature sets under the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, estimated without bias:

    MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n)

Unlike FID its expectation does not depend on the number of images, so small sets compare fairly. As in
the paper's code, the estimate is averaged over ``subsets`` random subsets of ``subset_size`` features
drawn without replacement from each set; the spread of the subset estimates is the error bar.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000
MIN_FEATURES = 4  # per set: the default subsets of n // 2 need at least 2 features
KERNEL_CACHE_FEATURES = 5000  # up to this many features in all, the kernel matrices are computed once (<= 200 MB)


class KIDResult(NamedTuple):
    """KID estimate: ``mean`` over subsets and ``std_error``, the standard deviation of the subset
    estimates (ddof 1), i.e. the standard error of one subset-size estimate; it bounds the error of
    the mean from above (the subsets overlap), as the paper's "±" does."""

    mean: float
    std_error: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for features x [m, d], y [n, d] -> [m, n] float64.

    The product runs in the features' dtype (float32 features: float32 BLAS), the cube in float64.
    """
    return (np.asarray(x @ y.T, dtype=np.float64) / x.shape[1] + 1.0) ** 3


def mmd2_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices k_xx [m, m], k_yy [n, n], k_xy [m, n] (m, n >= 2)."""
    m, n = k_xy.shape
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 features per set, got {m} and {n}")
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of features x [m, d] and y [n, d] under ``polynomial_kernel``."""
    return mmd2_from_kernels(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kernel_inception_distance(
    x: np.ndarray,
    y: np.ndarray,
    subsets: int = DEFAULT_SUBSETS,
    subset_size: int | None = None,
    seed: int = 0,
) -> KIDResult:
    """KID of features x [m, d] against y [n, d], averaged over random subsets.

    ``subset_size`` defaults to min(1000, m // 2, n // 2): the paper's 1000 where the sets allow, and
    at most half of each set, so that subsets differ on both sides and their spread is an error bar.
    The estimate is unbiased at any subset size; only its variance depends on it. Small sets (up to
    ``KERNEL_CACHE_FEATURES`` features in all) compute the kernel matrices once and index them per subset.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs features [m, d] and [n, d], got {list(x.shape)} and {list(y.shape)}")
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got {subsets}")
    size = subset_size or min(DEFAULT_SUBSET_SIZE, x.shape[0] // 2, y.shape[0] // 2)
    if not 2 <= size <= min(x.shape[0], y.shape[0]):
        raise ValueError(
            f"KID subsets of {size} features need 2 <= size <= the smaller set ({x.shape[0]} and {y.shape[0]} "
            f"features); KID needs at least {MIN_FEATURES} images per set"
        )
    rng = np.random.default_rng(seed)
    draws = [
        (rng.choice(x.shape[0], size, replace=False), rng.choice(y.shape[0], size, replace=False))
        for _ in range(subsets)
    ]
    if x.shape[0] + y.shape[0] <= KERNEL_CACHE_FEATURES:
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        estimates = [mmd2_from_kernels(k_xx[np.ix_(i, i)], k_yy[np.ix_(j, j)], k_xy[np.ix_(i, j)]) for i, j in draws]
    else:
        estimates = [mmd2_unbiased(x[i], y[j]) for i, j in draws]
    estimates = np.array(estimates)  # [subsets]
    spread = float(estimates.std(ddof=1)) if subsets > 1 else float("nan")
    return KIDResult(float(estimates.mean()), spread, subsets, size)
