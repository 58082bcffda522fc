"""The metrics beside FID that need the Inception features themselves, not only their moments: KID
(``kid``) and improved precision and recall (``precision_recall``), of samples against a reference."""

from __future__ import annotations

import numpy as np
import torch

from dctdiff.core.kid import MIN_FEATURES, kernel_inception_distance
from dctdiff.evaluation.precision_recall import DEFAULT_K, precision_recall

MIN_IMAGES = MIN_FEATURES  # KID subsets of at least 2 from each set, k-NN radii with k < n


def feature_metrics(
    samples: np.ndarray, reference: np.ndarray, k: int = DEFAULT_K, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """kid, kid_std_error, precision and recall of sample features [m, d] against reference features [n, d]
    (precision: samples inside the reference manifold; recall: reference inside the samples' manifold).

    Precision/recall cost O((m + n)^2 d) on ``device``: on a GPU (``feature_job.related_metrics`` runs this
    on one of the cluster's), any size; on a CPU, thousands of images.
    """
    if min(len(samples), len(reference)) < max(MIN_IMAGES, k + 1):
        raise ValueError(
            f"KID and precision/recall need at least {max(MIN_IMAGES, k + 1)} images per set, "
            f"got {len(samples)} and {len(reference)}"
        )
    kid = kernel_inception_distance(samples, reference)
    quality = precision_recall(reference, samples, k=k, device=device)
    return {"kid": kid.mean, "kid_std_error": kid.std_error, "precision": quality.precision, "recall": quality.recall}
