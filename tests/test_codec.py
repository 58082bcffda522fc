"""The codecs against the plain per-block reference in codec_reference.py (docs/ARCHITECTURE.md, "Codec")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dctdiff.core.codec import DCTCodec, PixelCodec, zigzag_order
from dctdiff.data.bundled_photos import photo_crops
from tests import codec_reference as ref


def random_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("block", [2, 4, 8])
def test_zigzag_matches_jpeg_table(block):
    assert zigzag_order(block).tolist() == ref.ZIGZAG[block]


CASES = [  # (height, width, block, keep)
    (8, 8, 2, 4),
    (8, 12, 2, 3),
    (16, 8, 4, 9),
    (16, 24, 4, 16),
    (16, 16, 8, 18),
    (32, 16, 8, 64),
]


@pytest.mark.parametrize("height,width,block,keep", CASES)
def test_encode_and_analyze_match_reference(height, width, block, keep):
    images = random_images(3, height, width, seed=height * width + block)
    images[0] = photo_crops(1, max(height, width), seed=block)[0, :height, :width]
    eta = 7.5
    codec = DCTCodec((height, width), block, keep, eta, dtype=torch.float64)
    expected_tokens = np.stack([ref.encode_image(im, block, keep, eta) for im in images])
    expected_coef = np.stack([ref.analyze_image(im, block) for im in images])
    np.testing.assert_allclose(codec.encode(images).numpy(), expected_tokens, atol=1e-9)
    np.testing.assert_allclose(codec.analyze(images).numpy(), expected_coef, atol=1e-9)
    assert codec.encode(images).shape == (3, codec.num_tokens, codec.token_dim)
    assert codec.num_tokens == (height // (2 * block)) * (width // (2 * block))
    assert codec.token_dim == 6 * keep


@pytest.mark.parametrize("height,width,block,keep", CASES)
def test_decode_within_one_level_of_reference(height, width, block, keep):
    images = random_images(2, height, width, seed=block)
    codec = DCTCodec((height, width), block, keep, eta=3.0)
    tokens = codec.encode(images)
    expected = np.stack([ref.decode_image(t, height, width, block, keep, 3.0) for t in tokens.double().numpy()])
    decoded = codec.decode(tokens).numpy()
    assert decoded.dtype == np.uint8 and decoded.shape == images.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


def test_float32_matches_float64():
    images = random_images(4, 32, 32)
    c32 = DCTCodec(32, 2, 4, 242.382)
    c64 = DCTCodec(32, 2, 4, 242.382, dtype=torch.float64)
    assert c32.encode(images).dtype == torch.float32
    np.testing.assert_allclose(c32.encode(images).numpy(), c64.encode(images).numpy(), atol=1e-5)


@pytest.mark.parametrize("block", [2, 4, 8])
def test_luma_round_trips_exactly_with_all_frequencies(block):
    images = random_images(2, 4 * block, 4 * block, seed=block)
    codec = DCTCodec(4 * block, block, block * block, dtype=torch.float64)
    tokens = codec.encode(images).reshape(2, codec.num_tokens, 6, block * block)
    tokens[:, :, 4:] = 0.0  # grey chroma: only the Y plane matters
    grey = codec.decode(tokens.reshape(2, codec.num_tokens, -1)).numpy().astype(np.float64)
    luma = ref.rgb_to_ycbcr(images)[..., 0]
    # With Cb = Cr = 128 the decoder outputs R = G = B = Y, rounded: the Y plane itself; where Y is a
    # tie (x.5, ~1 pixel in 1000) float rounding of either computation picks the level.
    expected = np.clip(np.round(luma), 0, 255)
    tie = np.abs(luma - np.floor(luma) - 0.5) < 1e-9
    np.testing.assert_array_equal(grey[..., 0][~tie], expected[~tie])
    assert np.abs(grey[..., 0] - expected)[tie].max(initial=0) <= 1
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_full_keep_round_trip_loses_only_chroma_detail():
    images = photo_crops(8, 64, seed=1)
    codec = DCTCodec(64, 2, 4)
    decoded = codec.decode(codec.encode(images)).numpy()
    # Luma of the round trip differs from the original's only by rounding of the RGB output.
    luma_error = np.abs(ref.rgb_to_ycbcr(decoded)[..., 0] - ref.rgb_to_ycbcr(images)[..., 0])
    assert luma_error.mean() < 1.0
    psnr = 10 * np.log10(255**2 / np.mean((decoded.astype(float) - images) ** 2))
    assert psnr > 30


def test_decode_of_fewer_frequencies_is_blurrier():
    images = photo_crops(8, 64, seed=2)
    errors = []
    for keep in (1, 2, 3, 4):
        codec = DCTCodec(64, 2, keep)
        errors.append(np.mean((codec.decode(codec.encode(images)).numpy().astype(float) - images) ** 2))
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("block,keep", [(2, 4), (2, 3), (4, 9), (4, 16), (8, 18)])
def test_tokens_from_coefficients_equals_encode(block, keep):
    images = random_images(3, 4 * block, 8 * block, seed=keep)
    codec = DCTCodec((4 * block, 8 * block), block, keep, eta=11.0)
    np.testing.assert_allclose(
        codec.tokens_from_coefficients(codec.analyze(images)).numpy(), codec.encode(images).numpy(), atol=1e-4
    )
    half = codec.analyze(images).half()
    assert codec.tokens_from_coefficients(half).dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(
    block=st.sampled_from([2, 4, 8]),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    keep_fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
)
@example(block=8, rows=1, cols=3, keep_fraction=1.0, seed=1)  # missed a float32 tolerance once
def test_hflip_tokens_equals_flipping_the_image(block, rows, cols, keep_fraction, seed):
    keep = max(1, int(round(keep_fraction * block * block)))
    height, width = 2 * block * rows, 2 * block * cols
    images = random_images(2, height, width, seed=seed)
    # float64: the flip is exact, so only rounding of the two encodes may differ (float32 left ~1e-5 at B=8)
    codec = DCTCodec((height, width), block, keep, eta=50.0, dtype=torch.float64)
    flipped = codec.encode(np.ascontiguousarray(images[:, :, ::-1]))
    np.testing.assert_allclose(codec.hflip_tokens(codec.encode(images)).numpy(), flipped.numpy(), atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(patch=st.sampled_from([1, 2, 4]), rows=st.integers(1, 4), cols=st.integers(1, 4), seed=st.integers(0, 999))
def test_pixel_codec_round_trips_exactly(patch, rows, cols, seed):
    images = random_images(2, patch * rows, patch * cols, seed=seed)
    codec = PixelCodec((patch * rows, patch * cols), patch)
    tokens = codec.encode(images)
    assert tokens.shape == (2, rows * cols, 3 * patch * patch)
    assert tokens.min() >= -1 and tokens.max() <= 1
    np.testing.assert_array_equal(codec.decode(tokens).numpy(), images)
    flipped = codec.encode(np.ascontiguousarray(images[:, :, ::-1]))
    np.testing.assert_array_equal(codec.hflip_tokens(tokens).numpy(), flipped.numpy())


def test_pixel_tokens_are_row_major_patches():
    images = random_images(1, 4, 4)
    tokens = PixelCodec(4, 2).encode(images)
    # Token 1 is the top-right patch; inside a patch: row, column, then RGB (U-ViT's 'p1 p2 c').
    expected = images[0, 0:2, 2:4].reshape(-1) / 127.5 - 1
    np.testing.assert_allclose(tokens[0, 1].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(resolution=30, block_size=2, keep=4), "multiple of 2 x block size"),
        (dict(resolution=(32, 20), block_size=4, keep=4), "width 20"),
        (dict(resolution=32, block_size=2, keep=5), "keep must be"),
        (dict(resolution=32, block_size=2, keep=0), "keep must be"),
        (dict(resolution=32, block_size=2, keep=4, eta=0.0), "eta must be"),
        (dict(resolution=32, block_size=0, keep=1), "block_size"),
        (dict(resolution=(32, 32, 3), block_size=2, keep=4), "resolution"),
        (dict(resolution=32, block_size=2, keep=4, dtype=torch.float16), "dtype"),
    ],
)
def test_invalid_codec_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCTCodec(**kwargs)


def test_invalid_inputs_raise_clear_errors():
    codec = DCTCodec(8, 2, 4)
    with pytest.raises(ValueError, match=r"shape \[N, 8, 8, 3\]"):
        codec.encode(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        codec.encode(np.zeros((1, 8, 8, 3), np.int32))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        codec.encode(np.full((1, 8, 8, 3), 300.0))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        codec.encode([[0]])
    with pytest.raises(ValueError, match=r"tokens must have shape \[N, 4, 24\]"):
        codec.decode(torch.zeros(1, 4, 23))
    with pytest.raises(ValueError, match="coefficients must have shape"):
        codec.tokens_from_coefficients(torch.zeros(1, 4, 6, 3))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PixelCodec(10, 4)


def test_float_images_in_range_are_accepted():
    images = random_images(2, 8, 8)
    codec = DCTCodec(8, 2, 4)
    np.testing.assert_allclose(codec.encode(images.astype(np.float32)), codec.encode(images), atol=1e-6)
    torch_images = torch.from_numpy(images)
    np.testing.assert_allclose(codec.encode(torch_images), codec.encode(images))


@pytest.mark.parametrize("block", [2, 4, 8])
def test_token_bound_holds_for_extreme_images(block):
    """Saturated colours and checkerboards reach the largest coefficients; none exceeds token_bound."""
    size = 4 * block
    checker = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
    images = np.stack([
        np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8),
        np.stack([checker] * 3, -1), np.stack([checker, 255 - checker, checker], -1),
    ])  # fmt: skip
    codec = DCTCodec(size, block, block * block, eta=3.0)
    tokens = codec.encode(images)
    assert tokens.abs().max() <= codec.token_bound + 1e-6
    assert tokens.abs().max() >= 0.9 * codec.token_bound  # the bound is nearly reached (it is tight)
    assert PixelCodec(size, 2).token_bound == 1.0
