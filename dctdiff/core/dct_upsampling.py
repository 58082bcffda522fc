"""DCT upsampling (DCTdiff paper, "DCT upsampling"): per B x B block, DCT-II, scale the coefficients by
the DCT-II resampling factor, zero-pad the block to 2B x 2B, inverse DCT.

The resampling factor, for the orthonormal DCT-II (D_N[k, n] = s_k sqrt(2/N) cos(pi (2n + 1) k / 2N),
s_0 = 1/sqrt(2), s_k = 1 otherwise). Its inverse writes a block of N samples as the cosine series
    f(t) = sqrt(2/N) sum_k s_k X_k cos(pi (2t + 1) k / 2N),   f(n) = x_n,
a smooth function of the continuous position t (in input pixels). The 2N-point inverse of the
zero-padded coefficients X'_k evaluates
    y_m = sqrt(2/2N) sum_{k<N} s_k X'_k cos(pi (2m + 1) k / 4N),
which is f at t = m/2 - 1/4: exactly the centres of the output pixels of a x2 upsampling (half-pixel
centres, the convention of ``F.interpolate(align_corners=False)``) — if and only if
sqrt(2/2N) X'_k = sqrt(2/N) X_k, i.e. X'_k = sqrt(2) X_k per axis and a factor 2 for a 2-D block.
Hence a block-constant image stays constant (DC: 2 X_0 / 2B = X_0 / B) and a block that is a cosine of
the block's own DCT basis is resampled without error.

The whole operation is linear per block: Y = U X U^T with U = sqrt(2) D_2B^T[:, :B] D_B [2B, B], so it
runs as one batched matrix product per axis. Colour: each channel independently (the map reproduces
constants, so it commutes with affine colour transforms such as RGB <-> YCbCr).
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

from dctdiff.core.codec import dct_matrix

ImageArray = Union[np.ndarray, torch.Tensor]
SUPPORTED_FACTORS = (2, 4)
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def upsampling_matrix(block_size: int) -> np.ndarray:
    """U [2B, B]: the x2 DCT upsampling of one axis of a B-sample block (see module docstring)."""
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    padded_inverse = dct_matrix(2 * block_size).T[:, :block_size]  # [2B, B]: zero-padded coefficients -> pixels
    return np.sqrt(2.0) * padded_inverse @ dct_matrix(block_size)


def _upsample2(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """One x2 step: float images [N, H, W, C] -> [N, 2H, 2W, C] (H, W divisible by B)."""
    n, height, width, channels = x.shape
    b = matrix.shape[1]
    blocks = x.reshape(n, height // b, b, width // b, b, channels)  # [N, H/B, B, W/B, B, C]
    up = torch.einsum("ph,nihjwc,qw->nipjqc", matrix, blocks, matrix)  # [N, H/B, 2B, W/B, 2B, C]
    return up.reshape(n, 2 * height, 2 * width, channels)


def dct_upsample(images: ImageArray, block_size: int, factor: int = 2) -> ImageArray:
    """Upsample images [N, H, W, C] by ``factor`` (2, or 4 = two x2 steps) with B x B block DCT upsampling.

    H and W must be divisible by ``block_size``. uint8 input gives uint8 output (rounded, clipped once at
    the end); float input gives float output (same dtype). Numpy in -> numpy out, torch in -> torch out
    (on the input's device).
    """
    if factor not in SUPPORTED_FACTORS:
        raise ValueError(f"factor must be one of {SUPPORTED_FACTORS}, got {factor!r}")
    matrix_np = upsampling_matrix(block_size)
    is_numpy = isinstance(images, np.ndarray)
    x = torch.from_numpy(np.array(images)) if is_numpy else images  # a copy: inputs may be read-only
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got {list(x.shape)}")
    height, width = x.shape[1:3]
    if height % block_size or width % block_size:
        raise ValueError(
            f"image size {height}x{width} must be divisible by block_size {block_size}; crop or pad the images "
            "or pick a block size that divides both sides"
        )
    is_uint8 = x.dtype == torch.uint8
    if not (is_uint8 or x.is_floating_point()):
        raise TypeError(f"images must be uint8 or floating point, got dtype {x.dtype}")
    work_dtype = torch.float32 if is_uint8 else x.dtype
    matrix = torch.as_tensor(matrix_np, dtype=work_dtype, device=x.device)
    out = x.to(work_dtype)
    for _ in range(factor.bit_length() - 1):  # log2(factor) x2 steps
        out = _upsample2(out, matrix)
    if is_uint8:
        out = out.round().clamp_(0, 255).to(torch.uint8)
    return out.numpy() if is_numpy else out


def pil_resize(images: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resize uint8 RGB images [N, H, W, 3] to ``size`` (height, width) with a Pillow filter (the
    baselines; Pillow widens the filter when shrinking, i.e. it antialiases)."""
    if method not in PIL_FILTERS:
        raise ValueError(f"method must be one of {sorted(PIL_FILTERS)}, got {method!r}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    height, width = size
    resized = [np.asarray(Image.fromarray(image).resize((width, height), PIL_FILTERS[method])) for image in images]
    return np.stack(resized) if resized else np.zeros((0, height, width, 3), np.uint8)
