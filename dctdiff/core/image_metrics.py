"""Per-image fidelity metrics for uint8 RGB images: PSNR and SSIM."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ImageArray = Union[np.ndarray, torch.Tensor]
PEAK = 255.0
SSIM_WINDOW = 11  # Gaussian window of sigma 1.5 truncated at 3.5 sigma
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(reference: ImageArray, test: ImageArray) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two uint8 image batches of equal shape [N, H, W, C] (or one image [H, W, C]) -> float64."""
    tensors = []
    for name, images in (("reference", reference), ("test", test)):
        tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
        if tensor.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 images (0..255), got dtype {tensor.dtype}")
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4:
            raise ValueError(f"{name} must have shape [N, H, W, C] or [H, W, C], got {list(tensor.shape)}")
        tensors.append(tensor.to(torch.float64))
    if tensors[0].shape != tensors[1].shape:
        raise ValueError(f"reference and test shapes differ: {list(tensors[0].shape)} vs {list(tensors[1].shape)}")
    return tensors[0], tensors[1]


def mse(reference: ImageArray, test: ImageArray) -> np.ndarray:
    """Mean squared error of each image [N], in grey levels squared."""
    ref, out = _pair(reference, test)
    return (ref - out).square().flatten(1).mean(dim=1).numpy()


def psnr_from_mse(mean_squared_error: np.ndarray | float) -> np.ndarray:
    """10 log10(255^2 / MSE) in dB; inf where the MSE is 0."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(PEAK**2 / np.asarray(mean_squared_error, dtype=np.float64))


def psnr(reference: ImageArray, test: ImageArray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of each image [N]; inf for identical images."""
    return psnr_from_mse(mse(reference, test))


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    """The normalised 11 x 11 Gaussian window of sigma 1.5 [1, 1, 11, 11]."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype) - SSIM_WINDOW // 2
    line = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    line = line / line.sum()
    return torch.outer(line, line)[None, None]


def ssim(reference: ImageArray, test: ImageArray) -> np.ndarray:
    """Structural similarity of each image [N] (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03), the mean over channels and the pixels whose window lies inside the image,
    as in the reference MATLAB code and scikit-image."""
    ref, out = _pair(reference, test)
    if min(ref.shape[1:3]) < SSIM_WINDOW:
        window = f"{SSIM_WINDOW} x {SSIM_WINDOW}"
        raise ValueError(f"SSIM's {window} window needs images of at least {window} pixels, got {list(ref.shape[1:3])}")
    x, y = (t.permute(0, 3, 1, 2).flatten(0, 1)[:, None] for t in (ref, out))  # [N * C, 1, H, W]
    kernel = _gaussian_window(x.dtype)

    def local_mean(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(images, kernel)  # no padding: windows inside the image only

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    covariance = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(ref.shape[0], -1).mean(dim=1).numpy()
