"""FID while training: n EMA samples against the training set's Inception statistics.

Used by `dctdiff train` (``cadence.fid_every``, ``cadence.fid_samples``) and, through it, as the
objective of `dctdiff sweep`: unlike the training loss, FID compares runs with different SNR scales c
or loss weights (paper §4, §5 report FID for exactly these ablations).

The reference statistics are computed once per prepare output by a Ray Data job over its shards decoded
with every frequency kept, and cached beside them as ``fid_stats.npz`` (pytorch-fid's ``mu``/``sigma``
plus the number of images, so a re-prepared dataset is noticed). During training the sample seeds
``0..n-1`` are split over the Ray Train workers and their Inception feature moments summed, so the
FID of a step does not depend on the worker count.

KID and precision/recall (``dctdiff.evaluation.feature_metrics``) are not measured here: they need the
reference's features themselves, which the cached statistics (moments only) do not hold; gathering the
samples' features over ranks would be cheap (8 KiB per image). `dctdiff evaluate fid` reports them.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch

from dctdiff.infra import storage
from dctdiff.core.codec import Codec
from dctdiff.evaluation.fid import FeatureMoments, FIDStats, extract_features, fid_from_stats, load_inception
from dctdiff.core.generation import generate_images
from dctdiff.core.uvit import UViT
from dctdiff.core.noise_schedule import VPSchedule

logger = logging.getLogger(__name__)

REFERENCE_FILE = "fid_stats.npz"


def reference_uri(data_uri: str) -> str:
    """Where the FID statistics of a prepare output are cached: ``<data>/fid_stats.npz``."""
    return storage.join(storage.normalize(data_uri), REFERENCE_FILE)


def _cached_image_count(uri: str) -> int | None:
    """Number of images the cached statistics at ``uri`` were computed from (None: no usable cache)."""
    if not storage.exists(uri):
        return None
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        return int(data["images"]) if "images" in data.files else None


def ensure_reference_stats(data_uri: str, rows: int) -> str:
    """URI of the FID statistics of the prepare output ``data_uri`` (``rows`` images), computed with a
    Ray Data job and cached when missing or made from another number of images. Needs Ray initialised."""
    from dctdiff.evaluation.feature_job import image_set_stats
    from dctdiff.evaluation.image_sets import PreparedImages

    uri = reference_uri(data_uri)
    if _cached_image_count(uri) == rows:
        return uri
    logger.info("FID reference: Inception statistics of the %d training images of %s -> %s", rows, data_uri, uri)
    (stats,) = image_set_stats([PreparedImages(data_uri)])
    buffer = io.BytesIO()
    np.savez(buffer, mu=stats.mu, sigma=stats.sigma, images=rows)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def _all_reduce(moments: FeatureMoments, device: torch.device | str) -> FeatureMoments:
    """Sum feature moments over the torch.distributed group (one collective of 1 + D + D^2 float64)."""
    import torch.distributed as dist

    dim = moments.total.shape[0]
    flat = torch.from_numpy(np.concatenate([[moments.count], moments.total, moments.outer.ravel()])).to(device)
    dist.all_reduce(flat)
    flat = flat.cpu().numpy()
    return FeatureMoments(int(round(flat[0])), flat[1 : 1 + dim], flat[1 + dim :].reshape(dim, dim))


def sample_fid(
    model: UViT,
    codec: Codec,
    schedule: VPSchedule,
    reference: FIDStats,
    count: int,
    sampler: str,
    nfe: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
) -> float:
    """FID of ``count`` samples of ``model`` (seeds 0..count-1) against ``reference``.

    With ``world`` > 1 every rank of the torch.distributed group calls this: rank r samples seeds
    r, r + world, ... and the Inception feature moments are summed, so every rank returns the same FID
    (and the same value as one process sampling every seed).
    """
    if count < 2:
        raise ValueError(f"FID needs at least 2 samples, got {count} (raise cadence.fid_samples)")
    seeds = list(range(rank, count, world))
    moments = FeatureMoments.empty()
    if seeds:
        images = generate_images(model, codec, schedule, seeds, sampler, nfe, device=device)  # uint8 [n, H, W, 3]
        moments.update(extract_features(images, load_inception(device=device)))  # [n, 2048]
    if world > 1:
        moments = _all_reduce(moments, device)
    return fid_from_stats(moments.stats(), reference)
