"""FID and KID while training: n EMA samples against the Inception features of the training set, or of
a held-out prepare output (``--fid-reference``, e.g. the test split).

Used by `dctdiff train` (``cadence.fid_every``, ``cadence.fid_samples``) and, through it, as the
objective of `dctdiff sweep`: unlike the training loss, FID compares runs with different SNR scales c
or loss weights (paper §4, §5 report FID for exactly these ablations).

The reference is computed once per prepare output by a Ray Data job over its shards decoded with every
frequency kept, and cached beside them as ``fid_stats.npz``: pytorch-fid's ``mu``/``sigma`` of all
training images, the number of images (so a re-prepared dataset is noticed), and ``features``, the
Inception features of a fixed random sample of up to ``REFERENCE_FEATURES`` training images (for KID,
which needs features, not moments). During training the sample seeds ``0..n-1`` are split over the Ray
Train workers and their features gathered back in seed order, so FID and KID (``kid``: the unbiased
estimate of ``dctdiff.core.kid`` with its default subsets; ``kid_std``: its spread over subsets)
equal those of one process sampling every seed, whatever the worker count.
"""

from __future__ import annotations

import io
import logging
from typing import NamedTuple

import numpy as np
import torch

from dctdiff.core.codec import Codec
from dctdiff.core.generation import generate_images
from dctdiff.core.kid import MIN_FEATURES, kernel_inception_distance
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.precision import Precision
from dctdiff.core.uvit import UViT
from dctdiff.evaluation.fid import (
    FeatureMoments,
    FIDStats,
    extract_features,
    fid_from_stats,
    load_inception,
    save_fid_stats,
    stats_from_npz,
)  # fmt: skip
from dctdiff.infra import storage

REFERENCE_FILE = "fid_stats.npz"
REFERENCE_FEATURES = 2000  # training images whose features are cached for KID (16 MB of float32)
REFERENCE_SEED = 0  # which training images: a fixed uniform sample without replacement

log = logging.getLogger(__name__)


class TrainingReference(NamedTuple):
    """What samples are compared with: FID statistics of all training images and the features [n, 2048]
    of the cached sample of them."""

    stats: FIDStats
    features: np.ndarray


def reference_uri(data_uri: str) -> str:
    """Where the FID/KID reference of a prepare output is cached: ``<data>/fid_stats.npz``."""
    return storage.join(storage.normalize(data_uri), REFERENCE_FILE)


def reference_positions(rows: int, size: int) -> np.ndarray:
    """Sorted dataset positions of the training images whose features the reference keeps."""
    return np.sort(np.random.default_rng(REFERENCE_SEED).choice(rows, min(size, rows), replace=False))


def _cached_key(uri: str) -> tuple[int, str] | None:
    """(images, precision) of the cached reference at ``uri`` (None: no usable cache, e.g. one written
    before the KID features were kept; references written before the precision was kept read as "auto",
    which no longer matches the resolved "fp32"/"bf16" and is recomputed once)."""
    if not storage.exists(uri):
        return None
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        if not {"images", "features"} <= set(data.files):
            return None
        return int(data["images"]), str(data["precision"]) if "precision" in data.files else "auto"


def check_reference_rows(rows: int, images: str = "reference images") -> None:
    """ValueError unless ``rows`` images (``images`` says which, for the message) can serve as the FID/KID
    reference."""
    if rows < MIN_FEATURES:
        raise ValueError(f"FID and KID during training need at least {MIN_FEATURES} {images}, got {rows}")


def ensure_reference_stats(data_uri: str, rows: int, precision: Precision = "auto") -> str:
    """URI of the FID/KID reference of the prepare output ``data_uri`` (``rows`` images), its Inception
    features computed in ``precision`` (as the samples' are) by a Ray Data job and cached; recomputed when
    missing or made from another number of images or in another precision (as resolved on the feature
    actors' device: "auto" is bf16 on GPUs). Needs Ray initialised."""
    from dctdiff.evaluation.feature_job import feature_precision, image_set_features
    from dctdiff.evaluation.image_sets import PreparedImages

    check_reference_rows(rows)
    uri = reference_uri(data_uri)
    resolved = feature_precision(precision)
    if _cached_key(uri) == (rows, resolved):
        return uri
    positions = reference_positions(rows, REFERENCE_FEATURES)
    log.info("FID/KID reference: Inception features of the %d images of %s (%d kept) -> %s",
             rows, data_uri, len(positions), uri)  # fmt: skip
    (group,) = image_set_features(
        [PreparedImages(data_uri)], keep_features=True, keep_positions=positions, precision=precision
    )
    stats = group.moments.stats()._replace(precision=resolved, images=rows, source=data_uri)
    save_fid_stats(uri, stats, features=group.features())
    return uri


def load_reference(uri: str) -> TrainingReference:
    """The reference that ``ensure_reference_stats`` cached at ``uri``."""
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        return TrainingReference(stats_from_npz(data, uri), data["features"])


def gather_features(features: np.ndarray, count: int, world: int, device: torch.device | str) -> np.ndarray:
    """Every rank's sample features [count, D] in seed order (rank r holds seeds r, r + world, ...).

    One all_gather of ceil(count / world) rows per rank, on ``device``: an NCCL group serves CUDA
    tensors only, a gloo group CPU tensors.
    """
    import torch.distributed as dist

    rows, dim = -(-count // world), features.shape[1]
    padded = torch.zeros(rows, dim, dtype=torch.float32, device=device)
    padded[: len(features)] = torch.from_numpy(features).to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    ordered = np.empty((count, dim), dtype=np.float32)
    for rank, part in enumerate(gathered):
        ordered[rank::world] = part[: len(range(rank, count, world))].cpu().numpy()
    return ordered


def sample_metrics(
    model: UViT,
    codec: Codec,
    schedule: VPSchedule,
    reference: TrainingReference,
    count: int,
    sampler: str,
    nfe: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    precision: Precision = "auto",
) -> dict[str, float]:
    """``fid``, ``kid`` and ``kid_std`` of ``count`` samples of ``model`` (seeds 0..count-1) against
    ``reference``, the U-ViT and Inception run in ``precision`` (``dctdiff.core.precision``).

    With ``world`` > 1 every rank of the torch.distributed group calls this: rank r samples seeds
    r, r + world, ... and the features are gathered in seed order, so every rank returns the same values
    as one process sampling every seed.
    """
    if count < MIN_FEATURES:
        raise ValueError(f"FID and KID need at least {MIN_FEATURES} samples, got {count} (raise cadence.fid_samples)")
    seeds = list(range(rank, count, world))
    features = np.zeros((0, reference.features.shape[1]), dtype=np.float32)
    if seeds:
        images = generate_images(
            model, codec, schedule, seeds, sampler, nfe, device=device, precision=precision, on_device=True
        )  # [n, H, W, 3] uint8, still on the device
        features = extract_features(images, load_inception(device=device), precision=precision)  # [n, 2048]
    if world > 1:
        features = gather_features(features, count, world, device)
    kid = kernel_inception_distance(features, reference.features)
    fid = fid_from_stats(FeatureMoments.empty(features.shape[1]).update(features).stats(), reference.stats)
    return {"fid": fid, "kid": kid.mean, "kid_std": kid.std_error}
