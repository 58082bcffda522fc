"""FID: the Fréchet distance against closed forms, scipy and torchmetrics; the offline Inception network
on real images (bundled photos, Fashion-MNIST); statistics files."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import scipy.linalg
import torch

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.sources import FASHION_MNIST_DIR
from dctdiff.evaluation.fid import (
    FEATURE_DIM,
    FeatureMoments,
    FIDStats,
    check_same_precision,
    default_batch_size,
    extract_features,
    fid_from_stats,
    frechet_distance,
    load_fid_stats,
    load_inception,
    save_fid_stats,
)
from tests.fid_reference import compute_fid_stats

N_IMAGES = 12  # per set: the CPU Inception runs at ~10 images/s on 2 cores


def random_covariance(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / (rank or dim)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    dim = 64
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("rank", [None, 20])  # full rank, and rank-deficient as with fewer images than features
def test_frechet_distance_matches_scipy_sqrtm(rank):
    rng = np.random.default_rng(1)
    dim = 80
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sigma1, sigma2 = random_covariance(rng, dim, rank), random_covariance(rng, dim, rank)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)  # pytorch-fid's formula, independent of our eigh route
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * np.real(root))
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-6 * np.trace(sigma1) * dim)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_feature_moments_match_numpy_and_merge():
    rng = np.random.default_rng(2)
    features = rng.gamma(2.0, size=(300, 32))
    whole = FeatureMoments.empty(32).update(features)
    parts = FeatureMoments.empty(32).update(features[:110]).merge(FeatureMoments.empty(32).update(features[110:]))
    for moments in (whole, parts):
        mu, sigma = moments.stats()[:2]
        np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 images"):
        FeatureMoments.empty(32).update(features[:1]).stats()


def test_fid_from_moments_matches_torchmetrics():
    """Our moments + distance against torchmetrics' FID state and formula (identity feature module)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 48

        def forward(self, x):
            return x

    rng = np.random.default_rng(3)
    a, b = rng.gamma(2.0, size=(200, 48)), rng.gamma(2.2, size=(150, 48)) + 0.1
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    ours = fid_from_stats(FeatureMoments.empty(48).update(b).stats(), FeatureMoments.empty(48).update(a).stats())
    assert ours == pytest.approx(metric.compute().item(), rel=1e-6)


@pytest.fixture(scope="module")
def inception():
    return load_inception(device="cpu")


@pytest.fixture(scope="module")
def photos():
    return photo_crops(N_IMAGES, 32, seed=5)


def test_inception_features_are_deterministic_and_2048_wide(inception, photos):
    first = extract_features(photos[:6], inception, batch_size=6)
    again = extract_features(photos[:6][::-1].copy(), inception, batch_size=4)[::-1]  # other batching, order
    assert first.shape == (6, FEATURE_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-6)
    assert (first >= 0).all() and first.mean() > 0.05  # average-pooled ReLU activations, not all dead


def test_inception_plugs_into_torchmetrics_fid(inception, photos):
    """torchmetrics' FrechetInceptionDistance takes our module as its custom feature extractor (uint8 NCHW
    in, as it passes images) and accumulates the statistics compute_fid_stats gives; the distance itself
    is checked against torchmetrics above (its 2048-wide general eigensolver takes ~30 s on 2 cores)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    images = photos[:8]
    metric = FrechetInceptionDistance(feature=inception)
    metric.update(torch.from_numpy(images).permute(0, 3, 1, 2), real=True)
    ours = compute_fid_stats(iter([images[:5], images[5:]]), device="cpu")  # batches, as the trainer streams them
    count = metric.real_features_num_samples.item()
    mean = metric.real_features_sum.numpy() / count
    covariance = (metric.real_features_cov_sum.numpy() - count * np.outer(mean, mean)) / (count - 1)
    assert count == 8
    np.testing.assert_allclose(ours.mu, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.sigma, covariance, rtol=1e-4, atol=1e-5)


def fashion_mnist(n: int) -> np.ndarray:
    from dctdiff.evaluation.image_sets import open_image_set

    return open_image_set("fashion-mnist", limit=n).load()


@pytest.mark.parametrize("dataset", ["photos", "fashion-mnist"])
def test_fid_is_zero_against_itself_and_grows_with_noise(inception, photos, dataset):
    if dataset == "fashion-mnist" and not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    images = photos if dataset == "photos" else fashion_mnist(N_IMAGES)
    rng = np.random.default_rng(4)
    clean = extract_features(images, inception, batch_size=N_IMAGES)
    reference = FeatureMoments.empty().update(clean).stats()
    # Against itself: the statistics accumulated in another order (rank-deficient covariances, 2048 wide).
    assert fid_from_stats(FeatureMoments.empty().update(clean[::-1]).stats(), reference) == pytest.approx(0, abs=1e-3)
    fids = []
    for sigma in (8.0, 40.0):
        noisy = np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)
        noisy_stats = FeatureMoments.empty().update(extract_features(noisy, inception, N_IMAGES)).stats()
        fids.append(fid_from_stats(noisy_stats, reference))
    assert 1.0 < fids[0] < fids[1]


def test_stats_file_round_trip_and_bad_width(tmp_path):
    rng = np.random.default_rng(5)
    stats = FIDStats(rng.normal(size=FEATURE_DIM), np.eye(FEATURE_DIM) * 2)
    save_fid_stats(tmp_path / "ref.npz", stats)
    with np.load(tmp_path / "ref.npz") as data:  # pytorch-fid reads exactly these keys
        assert sorted(data.files) == ["mu", "sigma"]
    loaded = load_fid_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    np.savez(tmp_path / "narrow.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r"width mu \[64\].*needs mu \[2048\]"):
        load_fid_stats(tmp_path / "narrow.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        load_fid_stats(tmp_path / "other.npz")


def test_stats_record_precision_images_and_source(tmp_path):
    """What saved statistics were computed from comes back on load; pytorch-fid files read as unrecorded."""
    stats = FIDStats(np.zeros(FEATURE_DIM), np.eye(FEATURE_DIM), precision="bf16", images=1234, source="photos:1234")
    save_fid_stats(tmp_path / "ref.npz", stats)
    with np.load(tmp_path / "ref.npz") as data:
        assert sorted(data.files) == ["images", "mu", "precision", "sigma", "source"]
    loaded = load_fid_stats(tmp_path / "ref.npz")
    assert (loaded.precision, loaded.images, loaded.source) == ("bf16", 1234, "photos:1234")
    np.savez(tmp_path / "pytorch_fid.npz", mu=np.zeros(FEATURE_DIM), sigma=np.eye(FEATURE_DIM))
    assert load_fid_stats(tmp_path / "pytorch_fid.npz")[2:] == (None, None, None)


def test_statistics_of_different_precision_are_refused_or_warned(caplog):
    fp32, bf16 = FIDStats(np.zeros(2), np.eye(2), "fp32"), FIDStats(np.zeros(2), np.eye(2), "bf16")
    unrecorded = FIDStats(np.zeros(2), np.eye(2))
    check_same_precision(fp32, unrecorded)  # published statistics are fp32
    with pytest.raises(ValueError, match=r"different precisions \(bf16 vs fp32\).*--allow-mixed-precision"):
        check_same_precision(bf16, unrecorded)
    caplog.clear()
    check_same_precision(bf16, fp32, allow=True)
    assert "different precisions (bf16 vs fp32)" in caplog.text


def test_features_default_to_fp32_and_large_batches_on_gpus():
    """fp32 Inception unless bf16 is asked for, in `evaluate` and in the library (on a GPU "auto" is bf16)."""
    from dctdiff.commands.evaluate_command import parse_args

    assert parse_args(["fid", "a.npz", "--save-stats", "b.npz"]).precision == "fp32"
    assert parse_args(["reconstruction", "a", "--block-size", "2"]).precision == "fp32"
    assert inspect.signature(extract_features).parameters["precision"].default == "fp32"
    assert (default_batch_size("cuda"), default_batch_size("cpu")) == (256, 50)


def test_bad_weights_give_clear_errors(tmp_path):
    not_torchscript = tmp_path / "weights.pt"
    not_torchscript.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        load_inception(not_torchscript, device="cpu")
    narrow = tmp_path / "narrow.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())), narrow)
    with pytest.raises(ValueError, match="width 3"):
        load_inception(narrow, device="cpu")
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "missing.pt", device="cpu")


def test_extract_features_rejects_bad_images(inception):
    with pytest.raises(TypeError, match="uint8"):
        extract_features(np.zeros((2, 32, 32, 3), np.float32), inception)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        extract_features(np.zeros((2, 3, 32, 32), np.uint8), inception)


def test_bf16_features_stay_close_to_fp32(inception, photos):
    """The GPU default (bf16 autocast) run through CPU autocast: features within ~8% of fp32."""
    exact = extract_features(photos[:4], inception, batch_size=4, precision="fp32")
    assert np.array_equal(exact, extract_features(photos[:4], inception, batch_size=4))  # CPU default: fp32
    bf16 = extract_features(photos[:4], inception, batch_size=4, precision="bf16")
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - exact).mean() / np.abs(exact).mean() < 0.08  # measured 5.1% (CPU autocast)
