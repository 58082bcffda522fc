"""Per-image fidelity metrics for uint8 RGB images: PSNR and SSIM."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ImageArray = Union[np.ndarray, torch.Tensor]
PEAK = 255.0
SSIM_WINDOW = 11  # Gaussian window of sigma 1.5 truncated at 3.5 sigma


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


def ssim(reference: ImageArray, test: ImageArray) -> np.ndarray:
    """Structural similarity of each image [N] (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03), the mean over channels and the pixels whose window lies inside the image.

    The SSIM map comes from torchmetrics; its own mean also counts the reflect-padded border, so the
    border is cropped here as in the reference MATLAB code and scikit-image.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure  # the eval extra

    ref, out = _pair(reference, test)
    if min(ref.shape[1:3]) < SSIM_WINDOW:
        window = f"{SSIM_WINDOW} x {SSIM_WINDOW}"
        raise ValueError(f"SSIM's {window} window needs images of at least {window} pixels, got {list(ref.shape[1:3])}")
    _, ssim_map = structural_similarity_index_measure(
        out.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2), data_range=PEAK, return_full_image=True
    )  # [N, C, H, W]
    pad = SSIM_WINDOW // 2
    return ssim_map[..., pad:-pad, pad:-pad].flatten(1).mean(dim=1).numpy()
