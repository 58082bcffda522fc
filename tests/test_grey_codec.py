"""Grey colour mode of the DCT codec and the one-channel pixel codec, against a plain per-block scipy DCT
of the single plane (docs/ARCHITECTURE.md, "Codec")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from dctdiff.core.codec import DCTCodec, PixelCodec
from dctdiff.core.token_layout import GREY_BLOCKS, TokenLayout
from tests.codec_reference import ZIGZAG


def grey_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random grey images, RGB uint8 [n, size, size, 3] with R = G = B."""
    plane = np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return np.repeat(plane, 3, axis=-1)


def reference_grey_tokens(images: np.ndarray, block: int, keep: int) -> np.ndarray:
    """Per token: its four B x B blocks of the grey plane - 128 in token order, scipy orthonormal DCT-II,
    zigzag, first ``keep``: [N, L, 4 keep]."""
    n, size = images.shape[0], images.shape[1]
    plane = images[..., 0].astype(np.float64) - 128.0
    cells = size // (2 * block)
    out = np.zeros((n, cells * cells, 4 * keep))
    for i in range(n):
        for r in range(cells):
            for c in range(cells):
                row, col = 2 * block * r, 2 * block * c
                corners = [(row, col), (row, col + block), (row + block, col), (row + block, col + block)]
                token = [
                    dctn(plane[i, y : y + block, x : x + block], norm="ortho").ravel()[ZIGZAG[block]][:keep]
                    for y, x in corners
                ]
                out[i, r * cells + c] = np.concatenate(token)
    return out


@pytest.mark.parametrize("block, keep", [(2, 4), (2, 1), (4, 9), (8, 18)])
def test_grey_encode_matches_per_block_dct(block, keep):
    images = grey_images(3, 4 * block, seed=block)
    codec = DCTCodec(4 * block, block, keep, eta=2.5, dtype=torch.float64, colour="grey")
    expected = reference_grey_tokens(images, block, keep) / 2.5
    assert codec.token_dim == 4 * keep and codec.layout.blocks == GREY_BLOCKS
    np.testing.assert_allclose(codec.encode(images).numpy(), expected, rtol=0, atol=1e-9)
    analysed = codec.analyze(images)  # [N, L, 4, B*B]
    assert tuple(analysed.shape[2:]) == (4, block * block)
    np.testing.assert_allclose(codec.tokens_from_coefficients(analysed).numpy(), expected, rtol=0, atol=1e-9)


def test_grey_tokens_are_the_luma_blocks_of_the_colour_codec():
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    grey = DCTCodec(16, 4, 16, colour="grey").analyze(images)
    colour = DCTCodec(16, 4, 16).analyze(images)
    torch.testing.assert_close(grey, colour[:, :, :4], rtol=0, atol=1e-3)


@pytest.mark.parametrize("block", [2, 4, 8])
def test_grey_round_trip_is_exact_with_all_frequencies(block):
    images = grey_images(4, 2 * block * 3, seed=7)
    codec = DCTCodec(2 * block * 3, block, block * block, eta=100.0, colour="grey")
    np.testing.assert_array_equal(codec.decode(codec.encode(images)).numpy(), images)


@pytest.mark.parametrize("block, keep", [(2, 3), (4, 16), (8, 10)])
def test_grey_hflip_is_exact(block, keep):
    images = grey_images(2, 4 * block, seed=3)
    codec = DCTCodec(4 * block, block, keep, dtype=torch.float64, colour="grey")
    flipped = codec.hflip_tokens(codec.encode(images))
    torch.testing.assert_close(flipped, codec.encode(images[:, :, ::-1]), rtol=0, atol=1e-9)


def test_grey_layout_and_bad_colour():
    layout = TokenLayout.for_colour("grey", 3)
    assert layout.planes == ("Y",) and layout.token_dim == 12 and layout.hflip_order == (1, 0, 3, 2)
    assert set(layout.band_masks()) == {"luma", "dc", "luma_dc", "ac", "luma_ac"}
    with pytest.raises(ValueError, match="colour must be one of ycbcr420, grey"):
        DCTCodec(8, 2, 4, colour="rgb")


def test_one_channel_pixel_codec():
    images = grey_images(3, 8, seed=5)
    codec = PixelCodec(8, 2, channels=1)
    tokens = codec.encode(images)
    assert codec.token_dim == 4 and tokens.shape == (3, 16, 4)
    plane = images[..., 0].astype(np.float64) / 127.5 - 1.0  # [N, 8, 8]
    expected = plane.reshape(3, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(3, 16, 4)  # row-major 2x2 patches
    np.testing.assert_allclose(tokens.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(codec.encode(images[..., :1]).numpy(), tokens.numpy())  # [N, H, W, 1] input
    np.testing.assert_array_equal(codec.decode(tokens).numpy(), images)  # R = G = B
    torch.testing.assert_close(codec.hflip_tokens(tokens), codec.encode(images[:, :, ::-1]), rtol=0, atol=0)


def test_one_channel_pixel_codec_takes_the_luma_of_colour_images():
    images = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    luma = np.clip(np.round(images @ np.array([0.299, 0.587, 0.114])), 0, 255)  # [N, 4, 4]
    patches = PixelCodec(4, 4, channels=1).analyze(images)  # one 4x4 patch
    np.testing.assert_array_equal(patches.numpy().reshape(2, 4, 4), luma)
