"""Metrics for small studies against independent computations: KID (Bińkowski et al. 2018), improved
precision and recall (Kynkäänniemi et al. 2019), the radial power spectrum and the block-DCT energy;
the `evaluate spectrum` subcommand and the KID/precision/recall of `evaluate fid` end to end."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch

from dctdiff.core.codec import dct_matrix, zigzag_order
from dctdiff.core.kid import kernel_inception_distance, mmd2_unbiased
from dctdiff.evaluation.precision_recall import precision_recall
from dctdiff.evaluation.spectrum import PLANES, radial_power, spectral_stats

# KID -------------------------------------------------------------------------------------------------


def slow_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of Gretton et al. (2012, eq. 3) as a plain double loop over pairs."""

    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b)) / len(a) + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def test_mmd2_unbiased_equals_the_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(7, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(slow_mmd2_unbiased(x, y), abs=1e-10)


def test_kid_of_two_samples_of_one_gaussian_is_zero_within_its_error():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    kid = kernel_inception_distance(x, y, subsets=50)
    assert kid.subset_size == 200 and kid.std_error > 0
    assert abs(kid.mean) < 2 * kid.std_error
    shifted = kernel_inception_distance(x, y + 0.5, subsets=50)
    assert shifted.mean > 10 * shifted.std_error  # shifted means: clearly positive
    # The estimate is unbiased: the average over many independent pairs of small sets is ~0.
    small = [mmd2_unbiased(rng.normal(size=(10, 16)), rng.normal(size=(10, 16))) for _ in range(400)]
    assert abs(np.mean(small)) < 3 * np.std(small) / np.sqrt(len(small))


def test_kid_rejects_sets_too_small_for_subsets():
    with pytest.raises(ValueError, match="at least 4 images"):
        kernel_inception_distance(np.zeros((3, 4)), np.zeros((10, 4)))


# Precision and recall --------------------------------------------------------------------------------


def slow_precision_recall(real: np.ndarray, generated: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019, eqs. 1-2) one sample at a time with exact distances."""

    def radius(points, i):
        return sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)[k - 1]

    def inside(manifold, query):
        radii = [radius(manifold, i) for i in range(len(manifold))]
        return [any(np.linalg.norm(q - p) <= r for p, r in zip(manifold, radii)) for q in query]

    return float(np.mean(inside(real, generated))), float(np.mean(inside(generated, real)))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equal_the_plain_implementation(k):
    rng = np.random.default_rng(2)
    real, generated = rng.normal(size=(40, 6)), rng.normal(0.4, 0.8, size=(30, 6))
    result = precision_recall(real, generated, k=k, batch_size=7)  # batches that do not divide the sets
    assert (result.precision, result.recall) == pytest.approx(slow_precision_recall(real, generated, k), abs=1e-12)


def test_precision_recall_of_known_gaussians():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(500, 8))
    itself = precision_recall(real, real)
    assert itself.precision == 1.0 and itself.recall == 1.0
    same = precision_recall(real, rng.normal(size=(500, 8)))
    assert same.precision > 0.85 and same.recall > 0.85
    shifted = precision_recall(real, rng.normal(size=(500, 8)) + 1.5)
    assert shifted.precision < 0.5 and shifted.recall < 0.5
    collapsed = precision_recall(real, 0.3 * rng.normal(size=(500, 8)))  # inside the real manifold, less diverse
    assert collapsed.precision > 0.95 and collapsed.recall < 0.5


# Spectra ---------------------------------------------------------------------------------------------


def grey(values: np.ndarray) -> np.ndarray:
    """Grey uint8 RGB images [N, H, W, 3] from luma values [N, H, W] (rounded)."""
    return np.repeat(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize(("u", "v"), [(3, 0), (0, 5), (4, 3), (6, 6)])
def test_radial_spectrum_of_a_sinusoid_peaks_at_its_frequency(u, v):
    size = 32
    rows, cols = np.mgrid[:size, :size]
    wave = 128 + 100 * np.cos(2 * np.pi * (u * rows + v * cols) / size + 0.3)
    power = radial_power(grey(wave[None]))[0]  # [16], bin r - 1 holds radius r
    assert power.argmax() + 1 == round(np.hypot(u, v))
    assert power.max() > 1000 * np.median(power)  # only uint8 rounding noise elsewhere


@pytest.mark.parametrize(("block_size", "row", "col"), [(2, 0, 1), (2, 1, 1), (4, 0, 2), (4, 2, 0), (4, 2, 2)])
def test_dct_energy_of_a_basis_function_sits_in_its_coefficient(block_size, row, col):
    """An image tiled with one B x B DCT basis function (amplitude 40: integer pixels for these
    frequencies) has all its energy in that luma coefficient: 40^2 in every Y block, nothing else."""
    d = dct_matrix(block_size)
    basis = np.outer(d[row], d[col])  # [B, B], orthonormal DCT-II basis function
    image = 128 + 40 * np.tile(basis, (8 // block_size * 2, 8 // block_size * 2))  # [16, 16]
    assert np.allclose(image, np.rint(image))
    stats = spectral_stats([grey(image[None])], block_size)
    expected = np.zeros((len(PLANES), block_size**2))
    expected[0, list(zigzag_order(block_size)).index(row * block_size + col)] = 40.0**2
    np.testing.assert_allclose(stats.energy, expected, atol=1e-9)


def test_kid_kernel_cache_gives_the_per_subset_computation(monkeypatch):
    from dctdiff.core import kid

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 12)), rng.normal(0.2, 1.0, size=(50, 12))
    cached = kid.kernel_inception_distance(x, y, subsets=20, seed=3)
    monkeypatch.setattr(kid, "KERNEL_CACHE_FEATURES", 0)
    assert kid.kernel_inception_distance(x, y, subsets=20, seed=3) == pytest.approx(cached, rel=1e-12)


# The evaluate subcommands ----------------------------------------------------------------------------


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def box_blur(images: np.ndarray) -> np.ndarray:
    """3 x 3 box blur (wrap-around) of uint8 images [N, H, W, 3]: less high-frequency power."""
    offsets = itertools.product((-1, 0, 1), repeat=2)
    shifted = [np.roll(images.astype(np.float64), (dy, dx), axis=(1, 2)) for dy, dx in offsets]
    return np.rint(np.mean(shifted, axis=0)).astype(np.uint8)


def test_spectrum_subcommand_writes_tables_plot_and_logs(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    from dctdiff.commands.evaluate_command import main
    from dctdiff.data.bundled_photos import photo_crops

    np.savez(tmp_path / "blurred.npz", images=box_blur(photo_crops(8, 32)))
    common = ["--resolution", "32", "--block-size", "4", "--mlflow-uri", tracking_uri]
    assert main(["spectrum", "photos:8", "photos:8", "--output", str(tmp_path / "self"), "--no-mlflow", *common]) == 0
    with open(tmp_path / "self" / "spectrum.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and all(float(r["ratio"]) == 1.0 for r in rows)  # a set against itself

    blurred = str(tmp_path / "blurred.npz")
    assert main(["spectrum", blurred, "photos:8", "--output", str(tmp_path / "out"), *common]) == 0
    with open(tmp_path / "out" / "dct_energy.csv") as handle:
        energy = list(csv.DictReader(handle))
    assert [(r["plane"], int(r["zigzag"])) for r in energy] == [(p, z) for p in PLANES for z in range(16)]
    assert (tmp_path / "out" / "spectrum.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dctdiff-evaluate").experiment_id])
    metrics = run.data.metrics
    assert metrics["spectrum_distance"] > 0.1
    assert metrics["spectrum_ratio_high"] < metrics["spectrum_ratio_low"] and metrics["spectrum_ratio_high"] < 0.5
    assert metrics["dct_energy_ratio_Y_high"] < 0.5
    assert run.data.tags["spectrum.block_size"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "spectrum")}
    assert artifacts == {"spectrum/spectrum.csv", "spectrum/dct_energy.csv", "spectrum/spectrum.png"}


def test_spectrum_writes_to_a_uri_what_it_writes_to_a_path_and_logs_the_same_files(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    from dctdiff.commands.evaluate_command import main
    from dctdiff.data.bundled_photos import photo_crops

    blurred = box_blur(photo_crops(8, 32))
    np.savez(tmp_path / "blurred.npz", images=blurred)
    sets = ["spectrum", str(tmp_path / "blurred.npz"), "photos:8", "--resolution", "32", "--block-size", "4"]
    assert main([*sets, "--output", f"file://{tmp_path}/by-uri", "--mlflow-uri", tracking_uri]) == 0
    assert main([*sets, "--output", str(tmp_path / "by-path"), "--no-mlflow"]) == 0
    names = ("spectrum.csv", "dct_energy.csv", "spectrum.png")
    written = {name: (tmp_path / "by-uri" / name).read_bytes() for name in names}
    for name in names[:2]:
        assert written[name] == (tmp_path / "by-path" / name).read_bytes(), name
    rows = list(csv.DictReader(written["spectrum.csv"].decode().splitlines()))
    expected = radial_power(blurred).mean(axis=0), radial_power(photo_crops(8, 32)).mean(axis=0)
    np.testing.assert_allclose([float(r["power_samples"]) for r in rows], expected[0], rtol=1e-9)
    np.testing.assert_allclose([float(r["power_reference"]) for r in rows], expected[1], rtol=1e-9)
    assert written["spectrum.png"].startswith(b"\x89PNG") and len(written["spectrum.png"]) > 1000
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dctdiff-evaluate").experiment_id])
    for name in names:  # MLflow holds the files that were written
        logged = client.download_artifacts(run.info.run_id, f"spectrum/{name}", str(tmp_path / "logged"))
        with open(logged, "rb") as handle:
            assert handle.read() == written[name], name
    assert list(tmp_path.rglob(".*.tmp")) == []  # no temporary left by storage.atomic_path


def test_spectrum_subcommand_bad_inputs(tmp_path, capsys):
    from dctdiff.commands.evaluate_command import main
    from dctdiff.data.bundled_photos import photo_crops

    np.savez(tmp_path / "small.npz", images=photo_crops(2, 16))
    np.savez(tmp_path / "large.npz", images=photo_crops(2, 32))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    cases = [
        (["spectrum", str(tmp_path / "small.npz"), str(tmp_path / "large.npz")], "of one size"),
        (["spectrum", str(tmp_path / "stats.npz"), "photos:2", "--resolution", "32"], "needs images"),
        (["spectrum", "photos:2", "photos:2", "--resolution", "32", "--block-size", "3"], "block size"),
    ]
    for argv, message in cases:
        assert main([*argv, "--no-mlflow", "--output", str(tmp_path / "out")]) == 2, argv
        assert message in capsys.readouterr().err.splitlines()[-1], argv


class FakeInception(torch.nn.Module):
    """A fast stand-in with the FID Inception's interface: [N, 3, 299, 299] -> [N, 2048] (fixed random
    projection of an 8 x 8 average pool, then ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = torch.nn.Linear(3 * 8 * 8, 2048)
        torch.nn.init.normal_(self.projection.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)))


@pytest.mark.slow
def test_fid_subcommand_reports_kid_precision_recall(ray_session, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    from dctdiff.commands.evaluate_command import main
    from dctdiff.data.bundled_photos import photo_crops
    from dctdiff.evaluation.feature_metrics import feature_metrics
    from dctdiff.evaluation.fid import extract_features, load_inception

    weights = tmp_path / "fake_inception.pt"
    torch.jit.script(FakeInception()).save(str(weights))
    samples, reference = box_blur(photo_crops(10, 32, seed=1)), photo_crops(12, 32, seed=2)
    np.savez(tmp_path / "samples.npz", images=samples)
    np.savez(tmp_path / "reference.npz", images=reference)
    model = load_inception(weights, "cpu")
    expected = feature_metrics(extract_features(samples, model), extract_features(reference, model))

    argv = [
        "fid",
        str(tmp_path / "samples.npz"),
        str(tmp_path / "reference.npz"),
        "--weights",
        str(weights),
        "--batch-size",
        "3",
        "--mlflow-uri",
        tracking_uri,
        "--metric",
        "fid_ema",
    ]
    assert main(argv) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dctdiff-evaluate").experiment_id])
    for name, value in expected.items():  # the Ray job keeps the dataset order: the same KID subsets
        assert run.data.metrics[f"fid_ema_{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert 0 <= expected["precision"] <= 1 and expected["kid_std_error"] > 0
