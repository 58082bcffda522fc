"""A plain, slow reference of the DCTdiff codec written straight from docs/ARCHITECTURE.md, "Codec":
explicit per-pixel YCbCr formulas, per-block loops with scipy.fft.dctn, explicit bilinear upsampling.
Used only by tests and benchmarks (as the baseline the vectorised codec is measured against)."""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn, idctn

# JPEG zigzag order written out by hand (raster indices), docs/ARCHITECTURE.md, "Codec"; B=8 is the standard JPEG table.
ZIGZAG = {
    2: [0, 1, 2, 3],
    4: [0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15],
    8: [
        0,
        1,
        8,
        16,
        9,
        2,
        3,
        10,
        17,
        24,
        32,
        25,
        18,
        11,
        4,
        5,
        12,
        19,
        26,
        33,
        40,
        48,
        41,
        34,
        27,
        20,
        13,
        6,
        7,
        14,
        21,
        28,
        35,
        42,
        49,
        56,
        57,
        50,
        43,
        36,
        29,
        22,
        15,
        23,
        30,
        37,
        44,
        51,
        58,
        59,
        52,
        45,
        38,
        31,
        39,
        46,
        53,
        60,
        61,
        54,
        47,
        55,
        62,
        63,
    ],
}


def rgb_to_ycbcr(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., k].astype(np.float64) for k in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def downsample_chroma(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    out = np.zeros((h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            out[i, j] = plane[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean()
    return out


def upsample_chroma(plane: np.ndarray) -> np.ndarray:
    """Bilinear x2 with half-pixel centres and replicated edges, one output pixel at a time."""
    h, w = plane.shape
    out = np.zeros((2 * h, 2 * w))
    for i in range(2 * h):
        for j in range(2 * w):
            y, x = (i + 0.5) / 2 - 0.5, (j + 0.5) / 2 - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            value = 0.0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy = min(max(y0 + dy, 0), h - 1)
                    xx = min(max(x0 + dx, 0), w - 1)
                    value += wy * wx * plane[yy, xx]
            out[i, j] = value
    return out


def analyze_image(image: np.ndarray, block: int) -> np.ndarray:
    """One uint8 image [H, W, 3] -> coefficients [L, 6, B*B] (zigzag, unscaled)."""
    ycc = rgb_to_ycbcr(image)
    planes = [ycc[..., 0], downsample_chroma(ycc[..., 1]), downsample_chroma(ycc[..., 2])]
    h, w = image.shape[:2]
    rows, cols = h // (2 * block), w // (2 * block)
    zz = ZIGZAG[block]
    out = np.zeros((rows * cols, 6, block * block))
    for r in range(rows):
        for c in range(cols):
            blocks = [
                planes[0][
                    (2 * r + dr) * block : (2 * r + dr + 1) * block, (2 * c + dc) * block : (2 * c + dc + 1) * block
                ]
                for dr in (0, 1)
                for dc in (0, 1)
            ]
            blocks += [p[r * block : (r + 1) * block, c * block : (c + 1) * block] for p in planes[1:]]
            for k, blk in enumerate(blocks):
                coef = dctn(blk - 128.0, norm="ortho").reshape(-1)
                out[r * cols + c, k] = coef[zz]
    return out


def encode_image(image: np.ndarray, block: int, keep: int, eta: float) -> np.ndarray:
    """One uint8 image -> tokens [L, 6 * keep]."""
    coef = analyze_image(image, block)
    return (coef[:, :, :keep] / eta).reshape(coef.shape[0], -1)


def decode_image(tokens: np.ndarray, height: int, width: int, block: int, keep: int, eta: float) -> np.ndarray:
    """Tokens [L, 6 * keep] -> uint8 image [H, W, 3]."""
    rows, cols = height // (2 * block), width // (2 * block)
    zz = ZIGZAG[block]
    y = np.zeros((height, width))
    cb = np.zeros((height // 2, width // 2))
    cr = np.zeros_like(cb)
    for r in range(rows):
        for c in range(cols):
            tok = tokens[r * cols + c].reshape(6, keep) * eta
            for k in range(6):
                raster = np.zeros(block * block)
                raster[zz[:keep]] = tok[k]
                pixels = idctn(raster.reshape(block, block), norm="ortho") + 128.0
                if k < 4:
                    br, bc = 2 * r + k // 2, 2 * c + k % 2
                    y[br * block : (br + 1) * block, bc * block : (bc + 1) * block] = pixels
                else:
                    plane = cb if k == 4 else cr
                    plane[r * block : (r + 1) * block, c * block : (c + 1) * block] = pixels
    ycc = np.stack([y, upsample_chroma(cb), upsample_chroma(cr)], axis=-1)
    return np.clip(np.round(ycbcr_to_rgb(ycc)), 0, 255).astype(np.uint8)
