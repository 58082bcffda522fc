"""In-process references for the Ray Data evaluation jobs: the same Inception features and moments
computed in one process, batch by batch, with no Ray (the tests compare the jobs against these)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dctdiff.evaluation.fid import FeatureMoments, FIDStats, ImageArray, extract_features, load_inception
from dctdiff.evaluation.reconstruction import ReconstructionRow, reconstruction_batch, summarize


def _batches(images: ImageArray | Iterable[ImageArray], batch_size: int) -> Iterable[ImageArray]:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return (images[start : start + batch_size] for start in range(0, images.shape[0], batch_size))
    return images


def compute_fid_stats(
    images: ImageArray | Iterable[ImageArray],
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
) -> FIDStats:
    """FID statistics (mu, sigma) of uint8 images [N, H, W, 3], or of an iterable of such batches."""
    model = load_inception(weights, device)
    moments = FeatureMoments.empty()
    for batch in _batches(images, batch_size):
        moments.update(extract_features(batch, model, batch_size))
    return moments.stats()


def reconstruction_analysis(
    images: np.ndarray, block_size: int, weights: str | None = None, batch_size: int = 50
) -> list[ReconstructionRow]:
    """In-process analysis of uint8 images [N, H, W, 3] (no Ray)."""
    model = load_inception(weights, "cpu")
    moments: dict[int, FeatureMoments] = {}
    squared: dict[int, float] = {}
    for start in range(0, len(images), batch_size):
        rows = reconstruction_batch({"image": images[start : start + batch_size]}, block_size)
        features = extract_features(rows["image"], model, batch_size)
        for keep in np.unique(rows["keep"]):
            selected = rows["keep"] == keep
            moments.setdefault(int(keep), FeatureMoments.empty()).update(features[selected])
            squared[int(keep)] = squared.get(int(keep), 0.0) + float(rows["mse"][selected].sum())
    return summarize(moments, {keep: total / len(images) for keep, total in squared.items()})
