"""dctdiff.data.statistics against direct NumPy computations over all coefficients (docs/ARCHITECTURE.md, "Statistics")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dctdiff.core.codec import DCTCodec
from dctdiff.core.token_layout import PLANES, TokenLayout
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.statistics import (
    TAU,
    band_entropy,
    coefficient_histogram,
    compute_stats,
    grid_values,
    histogram_bins,
    histogram_quantiles,
    in_stats_sample,
    load_stats,
    write_stats,
)

# The token layout written out by hand (an independent reference): blocks 0-3 are Y, 4 Cb, 5 Cr.
PLANE_BLOCKS = {"Y": slice(0, 4), "Cb": slice(4, 5), "Cr": slice(5, 6)}


def reference_stats(coefficients: np.ndarray, tau: float = TAU) -> tuple[float, dict[str, list[float]]]:
    """The definition, straight on the values: np.percentile, np.histogram, Shannon entropy in bits."""
    values = {
        plane: coefficients[:, :, PLANE_BLOCKS[plane], :].reshape(-1, coefficients.shape[-1]).astype(np.float64)
        for plane in PLANES
    }
    low, high = np.percentile(values["Y"][:, 0], [100 - tau, tau])
    eta = max(abs(low), abs(high))
    entropy = {}
    for plane in PLANES:
        entropy[plane] = []
        for f in range(coefficients.shape[-1]):
            v = values[plane][:, f]
            lo, hi = np.percentile(v, [100 - tau, tau])
            counts, _ = np.histogram(v[(v > lo) & (v < hi)] / eta, bins=100, range=(-1, 1))
            p = counts[counts > 0] / counts.sum() if counts.sum() else np.array([1.0])
            entropy[plane].append(float(-(p * np.log2(p)).sum()))
    return float(eta), entropy


def dataset(n: int, size: int, block: int, seed: int) -> np.ndarray:
    """Coefficients of photo crops with flat images mixed in (exact point masses: black, white and grey
    blocks). Rounded to 1e-9: float rounding noise (+-1e-14) around exact zeros would otherwise split a
    point mass at 0 over two histogram bins (float16 shards store such values as exact zeros too)."""
    images = photo_crops(n, size, seed=seed)
    images[::9] = 0
    images[1::9] = 255
    images[2::9, : size // 2] = 128
    return DCTCodec(size, block, block**2, dtype=torch.float64).analyze(images).numpy().round(9)


@pytest.mark.parametrize("block,size", [(2, 32), (4, 32), (8, 64)])
def test_stats_match_direct_numpy(block, size):
    coefficients = dataset(60, size, block, seed=block)
    layout = TokenLayout(block**2)
    stats = compute_stats(coefficient_histogram(coefficients, layout), layout, {"written": 60}, {"block_size": block})
    eta, entropy = reference_stats(coefficients)
    assert stats.eta == pytest.approx(eta, rel=0.005)
    for plane in PLANES:
        np.testing.assert_allclose(stats.entropy[plane], entropy[plane], atol=0.02, err_msg=plane)


def test_coefficients_stay_inside_the_fixed_range():
    """|c| <= 128 B: black, white and saturated-colour images reach the extremes without clipping."""
    extremes = np.zeros((4, 16, 16, 3), np.uint8)
    extremes[1] = 255
    extremes[2, ..., 0] = 255
    extremes[3, ::2, ::2] = 255
    for block in (2, 4, 8):
        coefficients = DCTCodec(16, block, block**2, dtype=torch.float64).analyze(extremes).numpy()
        assert np.abs(coefficients).max() <= 128 * block
        assert coefficients[0, :, :4, 0].min() == pytest.approx(-128 * block)  # black Y DC


def test_histogram_counts_each_value_at_its_float16_cell_and_merges_by_sum():
    block = 2
    coefficients = dataset(20, 32, block, seed=1)
    layout = TokenLayout(block**2)
    whole = coefficient_histogram(coefficients, layout)
    merged = coefficient_histogram(coefficients[:7], layout) + coefficient_histogram(coefficients[7:], layout)
    np.testing.assert_array_equal(whole, merged)
    cell_of = {(value, np.signbit(value)): k for k, value in enumerate(grid_values(block))}  # -0 and +0 apart
    cb_dc = coefficients[:, :, 4, 0].ravel().astype(np.float16).astype(np.float64)
    expected = [cell_of[(value, np.signbit(value))] for value in cb_dc]
    np.testing.assert_array_equal(whole[1, 0], np.bincount(expected, minlength=histogram_bins(block)))
    assert (whole[0].sum(axis=1) == coefficients[:, :, :4, 0].size).all()  # Y: four blocks per token


def test_histogram_quantiles_equal_numpy_percentile():
    rng = np.random.default_rng(0)
    values = np.sort(rng.choice(np.linspace(-5, 5, 41), size=997))  # many ties
    support, counts = np.unique(values, return_counts=True)
    q = [0.0, 1.75, 10, 50, 63.3, 98.25, 100.0]
    np.testing.assert_allclose(histogram_quantiles(counts, support, q), np.percentile(values, q), rtol=0, atol=1e-12)


def test_band_entropy_equals_direct_histogram():
    rng = np.random.default_rng(1)
    values = rng.laplace(0, 20, 5000).round(1)
    support, counts = np.unique(values, return_counts=True)
    lo, hi, eta = -30.0, 41.0, 60.0
    inside = values[(values > lo) & (values < hi)]
    direct, _ = np.histogram(inside / eta, bins=100, range=(-1, 1))
    p = direct[direct > 0] / direct.sum()
    assert band_entropy(counts, support, lo, hi, eta) == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-12)
    assert band_entropy(counts, support, 0.0, 0.0, eta) == 0.0


def test_uniform_values_have_log2_bins_entropy():
    """Closed form: values spread evenly over k of the 100 bins have entropy log2(k)."""
    eta = 100.0
    support = np.linspace(-49.5, 49.5, 100)  # one value per bin on [-0.5, 0.5] * eta
    counts = np.full(100, 7)
    assert band_entropy(counts, support, -1000, 1000, eta) == pytest.approx(np.log2(50))


def test_stats_json_round_trip(tmp_path):
    block = 2
    coefficients = dataset(10, 16, block, seed=2)
    layout = TokenLayout(block**2)
    stats = compute_stats(coefficient_histogram(coefficients, layout), layout, {"read": 10}, {"resolution": 16})
    write_stats(str(tmp_path / "stats.json"), stats)
    assert load_stats(str(tmp_path)) == stats == load_stats(str(tmp_path / "stats.json"))
    document = json.loads((tmp_path / "stats.json").read_text())
    assert document["format"] == "dctdiff-stats" and document["tau"] == TAU
    (tmp_path / "stats.json").write_text(json.dumps({"eta": 1.0}))
    with pytest.raises(ValueError, match="re-run `dctdiff prepare`"):
        load_stats(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `dctdiff prepare`"):
        load_stats(str(tmp_path / "missing"))


def test_no_coefficients_is_an_error():
    with pytest.raises(ValueError, match="no image"):
        compute_stats(np.zeros((3, 4, histogram_bins(2)), np.int64), TokenLayout(4), {}, {})


def test_stats_sample_is_a_deterministic_fraction():
    ids = [f"img/{i:05d}" for i in range(20000)]
    chosen = [in_stats_sample(i, 0.25, seed=3) for i in ids]
    assert abs(np.mean(chosen) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(ids))
    assert chosen == [in_stats_sample(i, 0.25, seed=3) for i in ids]
    assert chosen != [in_stats_sample(i, 0.25, seed=4) for i in ids]
    assert all(in_stats_sample(i, 1.0) for i in ids[:10])


def test_grey_images_have_exactly_zero_chroma_and_zero_chroma_entropy():
    """Grey pixels (R = G = B) have Cb = Cr = 128 exactly, so every chroma coefficient is exactly 0 in the
    fused float32 encode, and the statistics give the chroma planes entropy 0 (not rounding-noise bits)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (40, 32, 32, 1), dtype=np.uint8).repeat(3, axis=-1)
    for block_size in (2, 4):
        coefficients = DCTCodec(32, block_size, block_size**2).analyze(grey).numpy()  # [N, L, 6, B^2]
        assert np.array_equal(coefficients[:, :, 4:], np.zeros_like(coefficients[:, :, 4:]))
    coefficients = DCTCodec(32, 2, 4).analyze(grey).numpy()
    stats = compute_stats(coefficient_histogram(coefficients, TokenLayout(4)), TokenLayout(4), counts={}, codec={})
    assert stats.entropy["Cb"] == [0.0] * 4 and stats.entropy["Cr"] == [0.0] * 4
    assert all(h > 0 for h in stats.entropy["Y"])


def test_rounding_noise_of_either_sign_around_zero_adds_no_entropy():
    """A frequency whose values are 0 up to +-1e-5 noise has entropy 0, as if it were exactly 0."""
    values = grid_values(2)
    counts = np.zeros_like(values, dtype=np.int64)
    counts[np.searchsorted(values, [-1e-5, 0.0, 1e-5])] = [30, 40, 30]  # noise of both signs around 0
    low, high = histogram_quantiles(counts, values, [100 - TAU, TAU])
    assert band_entropy(counts, values, low, high, eta=240.0) == 0.0
    counts[np.searchsorted(values, [-50.0, -10.0, 10.0, 50.0])] = 20  # real spread: -10 and 10 inside the band
    low, high = histogram_quantiles(counts, values, [100 - TAU, TAU])
    assert band_entropy(counts, values, low, high, eta=240.0) > 0.5


def test_grey_stats_have_only_y_and_match_the_colour_codec_luma():
    """Grey mode: histograms and stats.json entropies for Y only, equal to the Y plane of the 4:2:0 statistics
    of the same grey images (the Y blocks are the same coefficients)."""
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (30, 16, 16, 1), dtype=np.uint8).repeat(3, axis=-1)
    layout = TokenLayout.for_colour("grey", 4)
    coefficients = DCTCodec(16, 2, 4, colour="grey").analyze(grey).numpy()  # [N, L, 4, 4]
    histogram = coefficient_histogram(coefficients, layout)
    assert histogram.shape == (1, 4, histogram_bins(2))
    assert (histogram[0].sum(axis=1) == coefficients[:, :, :, 0].size).all()
    stats = compute_stats(histogram, layout, {}, {})
    assert set(stats.entropy) == set(stats.band) == {"Y"}
    colour = DCTCodec(16, 2, 4).analyze(grey).numpy()
    full = compute_stats(coefficient_histogram(colour, TokenLayout(4)), TokenLayout(4), {}, {})
    assert stats.eta == full.eta and stats.entropy["Y"] == full.entropy["Y"]
