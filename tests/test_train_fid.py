"""Periodic FID and KID in pipelines/train.py: the reference (statistics and a feature sample) cached beside
the data, the features that gloo ranks gather, and the FID and KID that two DDP workers report (each
sampling half of the seeds) against a one-process recomputation from the checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dctdiff.commands.train_command import parse_args
from dctdiff.core.generation import generate_images
from dctdiff.core.kid import kernel_inception_distance
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.evaluation.fid import extract_features, fid_from_stats, load_fid_stats, load_inception
from dctdiff.evaluation.image_sets import PreparedImages
from dctdiff.models.builders import build_codec, build_noise_schedule, load_ema_model
from dctdiff.training import periodic_fid
from dctdiff.training.periodic_fid import ensure_reference_stats, gather_features, load_reference, reference_uri
from dctdiff.training.train_job import train
from tests.fid_reference import compute_fid_stats
from tests.prepared import write_prepared

FID_SAMPLES = 8  # the CPU Inception runs at ~10-20 images/s
SMALL = [
    "--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2",
    "--set", "cadence.log_every=1", "--set", "cadence.checkpoint_every=2", "--set", "cadence.sample_every=0",
    "--set", "cadence.sample_nfe=3", "--set", "cadence.fid_every=2", "--set", f"cadence.fid_samples={FID_SAMPLES}",
]  # fmt: skip


def seed_features(seeds) -> np.ndarray:
    """Features that name their seed: row s = s + [0, 0.25, 0.5], float32 [n, 3]."""
    return np.array([[s + 0.25 * d for d in range(3)] for s in seeds], dtype=np.float32).reshape(-1, 3)


GATHER_COUNTS = (5, 2)  # on 3 ranks: uneven shares; a rank without seeds


def _gather_worker(rank: int, store_path: str, world: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        results[rank] = [
            gather_features(seed_features(range(rank, count, world)), count, world, "cpu") for count in GATHER_COUNTS
        ]
    finally:
        dist.destroy_process_group()


def test_ranks_gather_the_sample_features_in_seed_order(tmp_path):
    import torch.multiprocessing as mp

    world = 3
    with mp.get_context("spawn").Manager() as manager:  # never fork the test process (conftest)
        results = manager.dict()
        mp.spawn(_gather_worker, args=(str(tmp_path / "store"), world, results), nprocs=world)
        outcome = dict(results)
    for rank in range(world):
        for count, gathered in zip(GATHER_COUNTS, outcome[rank]):
            np.testing.assert_array_equal(gathered, seed_features(range(count)))


@pytest.mark.slow
def test_periodic_fid_and_kid_match_a_recomputation_from_the_checkpoint(ray_session, tmp_path):
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    request = parse_args(
        ["--data", str(data), *SMALL, "--max-steps", "4", "--workers", "2", "--name", "fid",
         "--storage", str(tmp_path / "runs"), "--mlflow-uri", tracking]
    )  # fmt: skip
    result, run_id = train(request.config, request.options, request.tracking)

    # reference: the Ray Data job's statistics and features (all 16 images, in dataset order) equal those of
    # the training images measured in this process
    inception = load_inception(device="cpu")
    training_images = PreparedImages(str(data)).load()
    expected_reference = compute_fid_stats(training_images)
    reference = load_reference(reference_uri(str(data)))
    np.testing.assert_allclose(reference.stats.mu, expected_reference.mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.stats.sigma, expected_reference.sigma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.features, extract_features(training_images, inception), rtol=1e-4, atol=1e-4)

    # FID and KID at every fid_every steps and the last, logged and reported to Ray Train
    client = MlflowClient(tracking)
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in ("fid", "kid", "kid_std")
    }
    assert all(sorted(values) == [2, 4] for values in history.values()), history
    assert history["fid"][2] != history["fid"][4]
    assert result.metrics["fid"] == pytest.approx(history["fid"][4], rel=1e-9)
    assert result.metrics["kid"] == pytest.approx(history["kid"][4], rel=1e-9)

    # the two workers' half-sets of seeds give the FID and KID of all seeds sampled in one process
    model, saved, state = load_ema_model(result.checkpoint.path)
    assert state["step"] == 4
    images = generate_images(
        model, build_codec(saved, state["eta"]), build_noise_schedule(saved), range(FID_SAMPLES), saved.cadence.sampler,
        saved.cadence.sample_nfe,
    )  # fmt: skip
    features = extract_features(images, inception)
    assert fid_from_stats(compute_fid_stats(images), expected_reference) == pytest.approx(history["fid"][4], rel=1e-4)
    kid = kernel_inception_distance(features, reference.features)  # subsets of min(1000, 8 // 2, 16 // 2) = 4
    assert kid.subset_size == 4 and kid.std_error > 0
    assert history["kid"][4] == pytest.approx(kid.mean, rel=1e-3, abs=1e-6)
    assert history["kid_std"][4] == pytest.approx(kid.std_error, rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_the_reference_is_recomputed_when_the_data_or_precision_changes_or_it_lacks_features(
    ray_session, tmp_path, monkeypatch
):
    monkeypatch.setattr(periodic_fid, "REFERENCE_FEATURES", 5)  # a sample of the 8 images
    data = write_prepared(tmp_path / "data", photo_crops(8, 32, seed=1), shards=1)
    uri = reference_uri(str(data))
    buffer = io.BytesIO()  # a cache written before the KID features were kept: right count, no features
    np.savez(buffer, mu=np.zeros(2048), sigma=np.eye(2048), images=8)
    Path(uri).write_bytes(buffer.getvalue())
    assert ensure_reference_stats(str(data), 8) == uri
    first = load_reference(uri)
    images = PreparedImages(str(data)).load()
    assert not np.allclose(first.stats.mu, 0)
    positions = periodic_fid.reference_positions(8, 5)
    assert len(set(positions.tolist())) == 5 and list(positions) == sorted(positions)
    expected = extract_features(images, load_inception(device="cpu"))[positions]
    np.testing.assert_allclose(first.features, expected, rtol=1e-4, atol=1e-4)

    written = Path(uri).stat().st_mtime_ns
    assert ensure_reference_stats(str(data), 8) == uri and Path(uri).stat().st_mtime_ns == written  # cached
    ensure_reference_stats(str(data), 8, precision="bf16")  # the samples' precision changed: recomputed
    bf16 = load_reference(uri).features
    assert not np.array_equal(bf16, first.features)
    assert np.abs(bf16 - first.features).mean() / np.abs(first.features).mean() < 0.08  # bf16 (CPU autocast)
    written = Path(uri).stat().st_mtime_ns
    assert ensure_reference_stats(str(data), 8, precision="bf16") == uri and Path(uri).stat().st_mtime_ns == written
    data = write_prepared(tmp_path / "data", photo_crops(12, 32, seed=1), shards=1)  # same folder, more images
    again = load_fid_stats(ensure_reference_stats(str(data), 12))  # still a pytorch-fid statistics file
    assert not np.allclose(again.mu, first.stats.mu)
    np.testing.assert_allclose(again.mu, compute_fid_stats(PreparedImages(str(data)).load()).mu, rtol=1e-5, atol=1e-5)
    assert load_reference(uri).features.shape == (5, 2048)


@pytest.mark.slow
def test_a_held_out_fid_reference_is_what_the_logged_fid_compares_with(ray_session, tmp_path):
    """`--fid-reference`: the reference is cached beside the held-out images, not the training data, and the
    logged FID is that of the checkpoint's samples against the held-out images."""
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    held_out = write_prepared(tmp_path / "held-out", photo_crops(8, 32, seed=3))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    request = parse_args(
        ["--data", str(data), "--fid-reference", str(held_out), *SMALL, "--max-steps", "2", "--name", "held-out",
         "--storage", str(tmp_path / "runs"), "--mlflow-uri", tracking]
    )  # fmt: skip
    result, run_id = train(request.config, request.options, request.tracking)

    assert Path(reference_uri(str(held_out))).exists() and not Path(reference_uri(str(data))).exists()
    model, saved, state = load_ema_model(result.checkpoint.path)
    images = generate_images(
        model, build_codec(saved, state["eta"]), build_noise_schedule(saved), range(FID_SAMPLES), saved.cadence.sampler,
        saved.cadence.sample_nfe,
    )  # fmt: skip
    expected = fid_from_stats(compute_fid_stats(images), compute_fid_stats(PreparedImages(str(held_out)).load()))
    assert result.metrics["fid"] == pytest.approx(expected, rel=1e-4)
    assert MlflowClient(tracking).get_run(run_id).data.tags["dctdiff.fid_reference"] == str(held_out)
