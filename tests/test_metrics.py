"""PSNR and SSIM against scikit-image's reference implementations, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dctdiff.core.image_metrics import mse, psnr, psnr_from_mse, ssim
from dctdiff.data.bundled_photos import photo_crops


@pytest.fixture(scope="module")
def pair():
    clean = photo_crops(5, 40, seed=1)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).round().astype(np.uint8)
    return clean, noisy


def test_psnr_matches_skimage(pair):
    clean, noisy = pair
    expected = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(clean, noisy)]
    np.testing.assert_allclose(psnr(clean, noisy), expected, rtol=1e-12)
    np.testing.assert_allclose(psnr_from_mse(mse(clean, noisy)), expected, rtol=1e-12)
    assert np.isinf(psnr(clean, clean)).all()


def test_ssim_matches_skimage_gaussian_window(pair):
    clean, noisy = pair
    expected = [
        structural_similarity(
            a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for a, b in zip(clean, noisy)
    ]
    np.testing.assert_allclose(ssim(clean, noisy), expected, rtol=1e-9)
    np.testing.assert_allclose(ssim(clean, clean), 1.0, rtol=1e-12)
    assert ssim(clean[0], noisy[0]).shape == (1,)  # a single [H, W, 3] image is a batch of one


def test_bad_inputs_raise():
    images = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(images, images[:1])
    with pytest.raises(TypeError, match="uint8"):
        psnr(images, images.astype(np.float32))
    with pytest.raises(ValueError, match="at least"):
        ssim(images[:, :8, :8], images[:, :8, :8])
