"""Image <-> token codecs: the DCTdiff block-DCT codec and the pixel-patch baseline.

DCTCodec follows the paper (Ning et al. 2025, §3) and docs/ARCHITECTURE.md, "Codec": RGB -> YCbCr (JPEG full range),
4:2:0 chroma, B x B orthonormal block DCT-II, JPEG zigzag order, keep the first ``keep`` frequencies of
each block, divide by eta. One token covers a 2B x 2B pixel region and holds the four Y blocks and
the Cb and Cr blocks of that region: token dim 6 * keep. The grey colour mode keeps only the four Y
blocks (token dim 4 * keep) and decodes to R = G = B = Y.

Encoding is affine per 2B x 2B x 3 pixel patch, so it is computed as patchify + one matrix product
with a matrix built once from the definitions (the per-block reference lives in the tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from dctdiff.core.token_layout import DEFAULT_COLOUR, TokenLayout, check_colour, check_token_resolution

ImageBatch = Union[np.ndarray, torch.Tensor]

# JPEG full-range colour transform (ITU-T T.871): rows give Y, Cb, Cr from R, G, B.
RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0])
# Inverse transform as used by JPEG decoders (rows give R, G, B from Y, Cb-128, Cr-128).
YCBCR_TO_RGB = np.array(
    [
        [1.0, 0.0, 1.402],
        [1.0, -0.344136, -0.714136],
        [1.0, 1.772, 0.0],
    ]
)
LEVEL_SHIFT = 128.0
LUMA_BLOCKS = 4  # the Y blocks come first in every colour mode's token
PIXEL_CHANNELS = (1, 3)  # PixelCodec: grey or RGB


def zigzag_order(block_size: int) -> np.ndarray:
    """Raster indices (row * B + col) of a B x B block in JPEG zigzag order.

    Anti-diagonals d = row + col are visited in turn; even d run bottom-left to top-right
    (row decreasing), odd d top-right to bottom-left (row increasing).
    """
    order = []
    for d in range(2 * block_size - 1):
        rows = range(max(0, d - block_size + 1), min(d, block_size - 1) + 1)
        if d % 2 == 0:
            rows = reversed(rows)
        order.extend(r * block_size + (d - r) for r in rows)
    return np.array(order, dtype=np.int64)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D [n, n]: coefficients = D @ signal (scipy ``dct(norm='ortho')``)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _resolution_pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        return int(resolution[0]), int(resolution[1])
    raise ValueError(f"resolution must be an int or a (height, width) pair, got {resolution!r}")


def _as_pixel_tensor(
    images: ImageBatch, resolution: tuple[int, int], dtype: torch.dtype, channels: int = 3
) -> torch.Tensor:
    """Validate a uint8 (or float in [0, 255]) image batch [N, H, W, channels] and return it as ``dtype``."""
    if isinstance(images, np.ndarray):
        # A view with negative strides (e.g. x[:, :, ::-1]) is copied: torch cannot wrap it.
        images = torch.from_numpy(images.copy() if min(images.strides, default=0) < 0 else np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    expected = (*resolution, channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images must have shape [N, {expected[0]}, {expected[1]}, {channels}] (N x H x W x "
            f"{'RGB' if channels == 3 else 'channels'}), got {list(images.shape)}"
        )
    if images.dtype == torch.uint8:
        return images.to(dtype)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 (or float in [0, 255]), got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 255):
        raise ValueError(
            f"float images must lie in [0, 255], got range [{images.min().item():.4g}, {images.max().item():.4g}]"
        )
    return images.to(dtype)


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.round().clamp_(0, 255).to(torch.uint8)


def colour_channels(colour: str) -> int:
    """Pixel channels of a colour mode: 1 for grey (its luma), else 3 (RGB)."""
    return 1 if check_colour(colour) == "grey" else 3


def pixel_channels(images: ImageBatch, channels: int) -> ImageBatch:
    """uint8 images [N, H, W, 3] -> uint8 [N, H, W, channels] (images with ``channels`` channels pass unchanged).

    One channel is the rounded luma Y of the codec's colour transform (the grey level of a grey image).
    """
    if channels not in PIXEL_CHANNELS:
        raise ValueError(f"channels must be one of {PIXEL_CHANNELS}, got {channels!r}")
    if int(images.shape[-1]) == channels:
        return images
    rgb = _as_pixel_tensor(images, tuple(images.shape[1:3]), torch.float64)  # [N, H, W, 3]
    luma = torch.as_tensor(RGB_TO_YCBCR[0], dtype=torch.float64)
    return _to_uint8(rgb @ luma)[..., None]  # [N, H, W, 1]


@dataclass(frozen=True)
class _TokenGrid:
    """Split [N, H, W, C] images into row-major P x P patches [N, L, P*P*C] and back."""

    height: int
    width: int
    patch: int

    @property
    def rows(self) -> int:
        return self.height // self.patch

    @property
    def cols(self) -> int:
        return self.width // self.patch

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        n, _, _, c = x.shape
        p = self.patch
        x = x.reshape(n, self.rows, p, self.cols, p, c)  # [N, R, P, C', P, ch]
        return x.permute(0, 1, 3, 2, 4, 5).reshape(n, self.rows * self.cols, p * p * c)

    def unpatchify(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        n = tokens.shape[0]
        p = self.patch
        x = tokens.reshape(n, self.rows, self.cols, p, p, channels)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(n, self.height, self.width, channels)

    def flip_columns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mirror the token grid left-right: [N, L, ...] -> [N, L, ...]."""
        n = tokens.shape[0]
        grid = tokens.reshape(n, self.rows, self.cols, *tokens.shape[2:])
        return grid.flip(2).reshape(tokens.shape)


def _check_tokens(tokens: torch.Tensor, num_tokens: int, token_dim: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch tensor, got {type(tokens).__name__}")
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (num_tokens, token_dim):
        raise ValueError(f"tokens must have shape [N, {num_tokens}, {token_dim}], got {list(tokens.shape)}")
    if not tokens.is_floating_point():
        raise TypeError(f"tokens must be floating point, got dtype {tokens.dtype}")


class Codec(ABC):
    """Images <-> tokens [N, L, D]: what the model, trainer and samplers see of a codec.

    ``layout`` is the DCT frequency layout of the token dims, or None for tokens without frequencies
    (pixels); the loss reads it for its frequency bands and EBFR weights.
    """

    layout: TokenLayout | None
    _grid: _TokenGrid  # the patches the tokens cover (2B x 2B pixels for DCT, P x P for pixels)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols)."""
        return self._grid.rows, self._grid.cols

    @property
    def num_tokens(self) -> int:
        """L = rows * cols."""
        return self._grid.rows * self._grid.cols

    @property
    @abstractmethod
    def token_dim(self) -> int:
        """D, the length of one token."""

    @property
    @abstractmethod
    def token_bound(self) -> float:
        """No token of a real image exceeds this in magnitude."""

    @abstractmethod
    def analyze(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3] -> what the shards store for them (unscaled)."""

    @abstractmethod
    def tokens_from_coefficients(self, coefficients: torch.Tensor | np.ndarray) -> torch.Tensor:
        """What ``analyze`` returns -> tokens [N, L, D]."""

    @abstractmethod
    def encode(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3] -> tokens [N, L, D]."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L, D] -> uint8 images [N, H, W, 3]."""

    @abstractmethod
    def hflip_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of the horizontally mirrored images."""


class DCTCodec(Codec):
    """The DCTdiff codec (paper §3, docs/ARCHITECTURE.md, "Codec").

    Args:
        resolution: image size, an int or (height, width); each divisible by 2 * block_size.
        block_size: B, the DCT block size.
        keep: number of zigzag-ordered frequencies kept per block, 1..B*B (paper: B*B - m*).
        eta: scale divisor of every kept coefficient (paper's entropy-consistent scaling).
        dtype: torch float dtype of the computation and of the tokens (float32 or float64).
        colour: a colour mode of COLOUR_MODES: "ycbcr420" (Y x4, Cb, Cr per token) or "grey" (Y x4; the
            input is still RGB, its luma is coded, and decoding gives R = G = B = Y).
    """

    def __init__(
        self,
        resolution: int | tuple[int, int],
        block_size: int,
        keep: int,
        eta: float = 1.0,
        dtype: torch.dtype = torch.float32,
        colour: str = DEFAULT_COLOUR,
    ) -> None:
        height, width = _resolution_pair(resolution)
        check_token_resolution(height, width, block_size)
        if not isinstance(keep, (int, np.integer)) or not 1 <= keep <= block_size**2:
            raise ValueError(f"keep must be an int in 1..block_size**2 = 1..{block_size**2}, got {keep!r}")
        if not np.isfinite(eta) or eta <= 0:
            raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.resolution = (height, width)
        self.block_size = int(block_size)
        self.keep = int(keep)
        self.eta = float(eta)
        self.dtype = dtype
        self.layout = TokenLayout.for_colour(colour, self.keep)
        self.colour = colour
        self._grid = _TokenGrid(height, width, 2 * self.block_size)
        self._chroma_grid = _TokenGrid(height // 2, width // 2, self.block_size)
        analysis, bias = _analysis_matrix(self.block_size)  # [12 B^2, 6, B^2], [6, B^2], on (R-G, G, B-G) patches
        blocks = self.layout.blocks_per_token  # grey: the four Y blocks only
        analysis, bias = analysis[:, :blocks], bias[:blocks]
        self._analysis = (analysis.reshape(analysis.shape[0], -1), bias.reshape(-1))
        kept_analysis = analysis[:, :, : self.keep] / self.eta
        self._encode = (kept_analysis.reshape(analysis.shape[0], -1), (bias[:, : self.keep] / self.eta).reshape(-1))
        self._luma_synthesis, self._chroma_synthesis = _synthesis_matrices(self.block_size, self.keep, self.eta)
        self._flip_sign = _hflip_signs(self.block_size, self.keep)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def token_dim(self) -> int:
        """blocks per token (6, grey 4) * keep."""
        return self.layout.token_dim

    @property
    def token_bound(self) -> float:
        """No token exceeds this in magnitude: |coefficient| <= 128 B (orthonormal DCT of values in
        [-128, 128], docs/ARCHITECTURE.md, "Statistics"), divided by eta."""
        return 128.0 * self.block_size / self.eta

    def _constant(
        self, name: str, value: np.ndarray | list, device: torch.device, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``value`` as a tensor on ``device`` (the codec's dtype unless given), built once per device."""
        key = (name, device, dtype)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(value, dtype=dtype or self.dtype, device=device)
        return self._cache[key]

    def _project(self, images: ImageBatch, name: str, matrix: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        x = _as_pixel_tensor(images, self.resolution, self.dtype)  # [N, H, W, 3] RGB
        green = x[..., 1:2]
        x = torch.cat([x[..., :1] - green, green, x[..., 2:] - green], dim=-1)  # [N, H, W, 3]: R-G, G, B-G (exact)
        patches = self._grid.patchify(x)  # [N, L, 12 B^2]
        weight = self._constant(name + ".w", matrix[0], x.device)
        bias = self._constant(name + ".b", matrix[1], x.device)
        return torch.addmm(bias, patches.reshape(-1, patches.shape[-1]), weight).reshape(
            patches.shape[0], patches.shape[1], -1
        )

    def encode(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3] -> tokens [N, L, blocks * keep] (kept coefficients / eta)."""
        return self._project(images, "encode", self._encode)

    def analyze(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3] -> all coefficients [N, L, blocks, B*B], zigzag order, not scaled."""
        coefficients = self._project(images, "analysis", self._analysis)
        return coefficients.reshape(coefficients.shape[0], coefficients.shape[1], self.layout.blocks_per_token, -1)

    def tokens_from_coefficients(self, coefficients: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Coefficients [N, L, blocks, K] -> tokens [N, L, blocks * keep]: the first K >= keep zigzag
        frequencies of each block (K = B*B as ``analyze`` returns, or K = keep as the trainer sends them)."""
        coefficients = torch.as_tensor(coefficients)
        expected = (self.num_tokens, self.layout.blocks_per_token)
        if (
            coefficients.ndim != 4
            or tuple(coefficients.shape[1:3]) != expected
            or not (self.keep <= coefficients.shape[3] <= self.block_size**2)
        ):
            raise ValueError(
                f"coefficients must have shape [N, {', '.join(map(str, expected))}, K] with keep = {self.keep} <= K <= "
                f"{self.block_size**2}, got {list(coefficients.shape)}"
            )
        kept = coefficients[..., : self.keep].to(self.dtype) / self.eta
        return kept.reshape(coefficients.shape[0], self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L, blocks * keep] -> uint8 images [N, H, W, 3]; exact inverse of ``encode`` up to the
        dropped frequencies and the chroma subsampling (grey: R = G = B = Y)."""
        _check_tokens(tokens, self.num_tokens, self.token_dim)
        tokens = tokens.to(self.dtype)
        n, device = tokens.shape[0], tokens.device
        blocks = tokens.reshape(n, self.num_tokens, self.layout.blocks_per_token, self.keep)
        luma_weight = self._constant("luma", self._luma_synthesis, device)  # [4 keep, 4 B^2]
        luma = blocks[:, :, :LUMA_BLOCKS].reshape(n, self.num_tokens, -1) @ luma_weight  # [N, L, 4 B^2]
        y = self._grid.unpatchify(luma, 1)[..., 0]  # [N, H, W]
        if self.layout.planes == ("Y",):
            return _to_uint8(y + LEVEL_SHIFT)[..., None].expand(-1, -1, -1, 3).contiguous()  # [N, H, W, 3], R = G = B
        chroma_weight = self._constant("chroma", self._chroma_synthesis, device)  # [keep, B^2]
        chroma = blocks[:, :, LUMA_BLOCKS:] @ chroma_weight  # [N, L, 2, B^2]
        chroma = chroma.permute(0, 1, 3, 2).reshape(n, self.num_tokens, -1)  # [N, L, B^2 * 2]
        cbcr = self._chroma_grid.unpatchify(chroma, 2)  # [N, H/2, W/2, 2]
        # Chroma 4:2:0 -> 4:4:4: bilinear x2, half-pixel centres, edges replicated (align_corners=False).
        cbcr = F.interpolate(cbcr.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        ycbcr = (
            torch.cat([y[:, None], cbcr], dim=1)
            + LEVEL_SHIFT
            - self._constant("offset", YCBCR_OFFSET[:, None, None], device)
        )  # [N, 3, H, W]: Y, Cb - 128, Cr - 128
        rgb = torch.einsum("kc,nchw->nhwk", self._constant("to_rgb", YCBCR_TO_RGB, device), ycbcr)
        return _to_uint8(rgb)

    def hflip_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact horizontal flip in token space: ``hflip_tokens(encode(x)) == encode(x[:, :, ::-1])``.

        Mirror the token grid's columns, swap the left/right Y blocks (0<->1, 2<->3; ``layout.hflip_order``) and negate every
        coefficient with an odd horizontal frequency (DCT-II basis cos(pi (2i+1) v / 2B) is odd under
        i -> B-1-i exactly when v is odd).
        """
        _check_tokens(tokens, self.num_tokens, self.token_dim)
        n = tokens.shape[0]
        blocks = self._grid.flip_columns(tokens).reshape(n, self.num_tokens, self.layout.blocks_per_token, self.keep)
        order = self._constant("hflip.order", list(self.layout.hflip_order), tokens.device, torch.int64)  # [blocks]
        sign = self._constant("hflip.sign", self._flip_sign, tokens.device, tokens.dtype)  # [keep]
        return (blocks.index_select(2, order) * sign).reshape(tokens.shape)


class PixelCodec(Codec):
    """The pixel-space baseline (paper's UViT): P x P patches, pixels scaled to [-1, 1], token dim C P^2.

    Same interface as DCTCodec; ``analyze`` returns the raw pixel patches [N, L, P*P*C] (0..255).
    ``channels`` C is 3 (RGB) or 1 (grey: the luma of RGB input, see ``pixel_channels``; decoding
    replicates it to R = G = B). Images may also be given with C channels already.
    """

    def __init__(
        self,
        resolution: int | tuple[int, int],
        patch_size: int,
        dtype: torch.dtype = torch.float32,
        channels: int = 3,
    ) -> None:
        height, width = _resolution_pair(resolution)
        if not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        for name, size in (("height", height), ("width", width)):
            if size <= 0 or size % patch_size:
                raise ValueError(f"image {name} {size} must be a positive multiple of patch_size = {patch_size}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if channels not in PIXEL_CHANNELS:
            raise ValueError(f"channels must be one of {PIXEL_CHANNELS}, got {channels!r}")
        self.resolution = (height, width)
        self.patch_size = int(patch_size)
        self.channels = int(channels)
        self.dtype = dtype
        self.layout = None
        self._grid = _TokenGrid(height, width, self.patch_size)

    @property
    def token_dim(self) -> int:
        """C P^2."""
        return self.channels * self.patch_size**2

    @property
    def token_bound(self) -> float:
        """Pixel tokens lie in [-1, 1]."""
        return 1.0

    def analyze(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3 or C] -> pixel patches [N, L, P*P*C], values 0..255, row-major (p1 p2 c)."""
        pixels = pixel_channels(images, self.channels)  # [N, H, W, C] uint8
        return self._grid.patchify(_as_pixel_tensor(pixels, self.resolution, self.dtype, self.channels))

    def tokens_from_coefficients(self, coefficients: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pixel patches [N, L, C P^2] (0..255) -> tokens in [-1, 1]."""
        coefficients = torch.as_tensor(coefficients)
        if coefficients.ndim != 3 or tuple(coefficients.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"pixel patches must have shape [N, {self.num_tokens}, {self.token_dim}], got {list(coefficients.shape)}"
            )
        return coefficients.to(self.dtype) / 127.5 - 1.0

    def encode(self, images: ImageBatch) -> torch.Tensor:
        """uint8 images [N, H, W, 3 or C] -> tokens [N, L, C P^2] in [-1, 1]."""
        return self.tokens_from_coefficients(self.analyze(images))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L, C P^2] -> uint8 images [N, H, W, 3] (one channel: R = G = B)."""
        _check_tokens(tokens, self.num_tokens, self.token_dim)
        pixels = _to_uint8(self._grid.unpatchify((tokens.to(self.dtype) + 1.0) * 127.5, self.channels))
        return pixels.expand(-1, -1, -1, 3).contiguous()  # [N, H, W, 3]

    def hflip_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Horizontal flip in token space: mirror the grid and each patch's columns."""
        _check_tokens(tokens, self.num_tokens, self.token_dim)
        n, p = tokens.shape[0], self.patch_size
        flipped = self._grid.flip_columns(tokens).reshape(n, self.num_tokens, p, p, self.channels).flip(3)
        return flipped.reshape(tokens.shape)


def _analysis_matrix(block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine map of one 2B x 2B x 3 patch (flattened row-major, channels last, as (R-G, G, B-G)) to
    its six zigzag-ordered coefficient blocks: returns (matrix [12 B^2, 6, B^2], bias [6, B^2]).

    Composed from the definitions (docs/ARCHITECTURE.md, "Codec"): colour transform, 2x2 chroma mean, level shift,
    block DCT-II (C = D X D^T), zigzag.
    """
    b = block_size
    d = dct_matrix(b)
    zigzag = zigzag_order(b)
    # Colour transform as a map of pixel (row, col, rgb) -> plane (row, col, ycc): [2B, 2B, 3] -> [3, 2B, 2B].
    eye = np.eye(4 * b * b * 3).reshape(-1, 2 * b, 2 * b, 3)  # basis patches [12B^2, 2B, 2B, 3]
    planes = np.einsum("kc,nhwc->nkhw", RGB_TO_YCBCR, eye)  # linear part of YCbCr [12B^2, 3, 2B, 2B]
    luma = planes[:, 0].reshape(-1, 2, b, 2, b).transpose(0, 1, 3, 2, 4).reshape(-1, 4, b, b)  # Y blocks 0..3
    chroma = planes[:, 1:].reshape(-1, 2, b, 2, b, 2).mean(axis=(3, 5))  # 2x2 mean -> [12B^2, 2, B, B]
    blocks = np.concatenate([luma, chroma], axis=1)  # [12B^2, 6, B, B]
    coefficients = np.einsum("uh,nkhw,vw->nkuv", d, blocks, d).reshape(-1, 6, b * b)[:, :, zigzag]
    # Re-express the map on (R-G, G, B-G) pixels: R = (R-G) + G, B = (B-G) + G. The chroma rows of JPEG's
    # colour transform sum to 0, so the G column of every chroma coefficient is 0 up to float64 rounding:
    # made exactly 0 here, grey pixels (R-G = B-G = 0) give exactly zero chroma in any precision.
    per_pixel = coefficients.reshape(4 * b * b, 3, 6, b * b)  # [pixel, R/G/B, block, frequency]
    per_pixel[:, 1] += per_pixel[:, 0] + per_pixel[:, 2]
    coefficients = np.where(np.abs(coefficients) < 1e-12, 0.0, coefficients)
    # Bias: the constant part. YCbCr offsets (+128 on chroma) minus the level shift 128 on all planes;
    # a constant c in a block only reaches its DC coefficient, as c * B (orthonormal DCT of a constant).
    bias = np.zeros((6, b * b))
    bias[:, 0] = (np.array([0, 0, 0, 0, 128.0, 128.0]) - LEVEL_SHIFT) * b
    return coefficients, bias


def _synthesis_matrices(block_size: int, keep: int, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear maps from kept tokens to level-shifted planes (docs/ARCHITECTURE.md, "Codec", decoding).

    Returns (luma [4 keep, 4 B^2]: the four Y blocks of a token -> its 2B x 2B Y patch, row-major;
    chroma [keep, B^2]: one chroma block -> its B x B pixels, row-major). Both include the factor eta.
    """
    b = block_size
    d = dct_matrix(b)
    zigzag = zigzag_order(b)[:keep]
    # Inverse DCT of each kept basis coefficient: X = D^T C D, C the unit matrix at a zigzag position.
    basis = np.zeros((keep, b * b))
    basis[np.arange(keep), zigzag] = 1.0
    pixels = np.einsum("uh,nuv,vw->nhw", d, basis.reshape(keep, b, b), d) * eta  # [keep, B, B]
    chroma = pixels.reshape(keep, b * b)
    luma = np.zeros((4, keep, 2, b, 2, b))
    for block in range(4):  # block k sits at (k // 2, k % 2) inside the 2B x 2B patch
        luma[block, :, block // 2, :, block % 2, :] = pixels
    return luma.reshape(4 * keep, 4 * b * b), chroma


def _hflip_signs(block_size: int, keep: int) -> np.ndarray:
    """+1/-1 per kept zigzag coefficient: -1 where the horizontal frequency (raster col) is odd."""
    columns = zigzag_order(block_size)[:keep] % block_size
    return np.where(columns % 2 == 1, -1.0, 1.0)
