"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §2).

Each feature set approximates its manifold by the union of balls around its points, the radius of a
point being the distance to its k-th nearest neighbour in the same set (k = 3 in the paper). Precision
is the fraction of generated samples inside the real manifold (fidelity), recall the fraction of real
samples inside the generated manifold (diversity). Distances are computed in batches of rows against
the whole other set, vectorized in torch (a GPU when given one).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

DEFAULT_K = 3
DEFAULT_BATCH = 1024


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float
    k: int


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for a [m, d], b [n, d] -> [m, n] (|a|^2 + |b|^2 - 2 a.b, clipped at 0)."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)


def knn_radii(features: torch.Tensor, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """Squared distance of each feature [n, d] to its k-th nearest neighbour in the set, itself excluded -> [n]."""
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k-NN radii need 1 <= k < the number of features, got k = {k} for {features.shape[0]}")
    # Each row's own distance (0) is its smallest, so the k-th neighbour is the (k + 1)-th smallest distance.
    return torch.cat(
        [
            _squared_distances(features[start : start + batch_size], features).kthvalue(k + 1, dim=1).values
            for start in range(0, features.shape[0], batch_size)
        ]
    )


def manifold_coverage(
    manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch_size: int = DEFAULT_BATCH
) -> float:
    """Fraction of queries [q, d] within the radius of at least one manifold point [n, d] (squared radii [n])."""
    inside = [
        (_squared_distances(queries[start : start + batch_size], manifold) <= radii[None, :]).any(dim=1)
        for start in range(0, queries.shape[0], batch_size)
    ]  # [b] bool each
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real: np.ndarray,
    generated: np.ndarray,
    k: int = DEFAULT_K,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
) -> PrecisionRecall:
    """Improved precision and recall of generated features [m, d] against real features [n, d].

    Computed in the features' dtype (float64 features: exact comparisons for tests).
    """
    real_t, generated_t = (torch.tensor(np.asarray(f)).to(device) for f in (real, generated))
    if real_t.ndim != 2 or generated_t.shape[1:] != real_t.shape[1:]:
        raise ValueError(
            f"precision/recall need features [n, d] and [m, d], got {list(real_t.shape)} and {list(generated_t.shape)}"
        )
    real_radii, generated_radii = knn_radii(real_t, k, batch_size), knn_radii(generated_t, k, batch_size)
    return PrecisionRecall(
        precision=manifold_coverage(real_t, real_radii, generated_t, batch_size),
        recall=manifold_coverage(generated_t, generated_radii, real_t, batch_size),
        k=k,
    )
