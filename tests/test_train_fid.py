"""Periodic FID in pipelines/train.py: reference statistics cached beside the data, and the FID that two
DDP workers report (each sampling half of the seeds) against a one-process recomputation from the
checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dctdiff.evaluation.fid import fid_from_stats, load_fid_stats
from tests.fid_reference import compute_fid_stats
from dctdiff.core.generation import generate_images
from dctdiff.evaluation.image_sets import PreparedImages
from dctdiff.training.training_fid import ensure_reference_stats, reference_uri
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.training.trainer import build_codec, build_noise_schedule, load_ema_model
from dctdiff.commands.train_command import parse_args
from dctdiff.training.launcher import train
from tests.prepared import write_prepared

pytestmark = pytest.mark.slow

FID_SAMPLES = 8  # the CPU Inception runs at ~10-20 images/s
SMALL = [
    "--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2",
    "--set", "cadence.log_every=1", "--set", "cadence.checkpoint_every=2", "--set", "cadence.sample_every=0",
    "--set", "cadence.sample_nfe=3", "--set", "cadence.fid_every=2", "--set", f"cadence.fid_samples={FID_SAMPLES}",
]  # fmt: skip


def test_periodic_fid_matches_a_recomputation_from_the_checkpoint(ray_session, tmp_path):
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    request = parse_args(
        ["--data", str(data), *SMALL, "--max-steps", "4", "--workers", "2", "--name", "fid",
         "--storage", str(tmp_path / "runs"), "--mlflow-uri", tracking]
    )  # fmt: skip
    result, run_id = train(request.config, request.options, request.tracking)

    # reference: the Ray Data job's statistics equal those of the training images measured in this process
    expected_reference = compute_fid_stats(PreparedImages(str(data)).load())
    reference = load_fid_stats(reference_uri(str(data)))
    np.testing.assert_allclose(reference.mu, expected_reference.mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.sigma, expected_reference.sigma, rtol=1e-5, atol=1e-5)

    # FID at every fid_every steps and the last, logged and reported to Ray Train
    history = {m.step: m.value for m in MlflowClient(tracking).get_metric_history(run_id, "fid")}
    assert sorted(history) == [2, 4] and history[2] != history[4]
    assert result.metrics["fid"] == pytest.approx(history[4], rel=1e-9)

    # the two workers' half-sets of seeds merge into the FID of all seeds sampled in one process
    model, saved, state = load_ema_model(result.checkpoint.path)
    assert state["step"] == 4
    images = generate_images(
        model, build_codec(saved, state["eta"]), build_noise_schedule(saved), range(FID_SAMPLES), saved.cadence.sampler,
        saved.cadence.sample_nfe,
    )  # fmt: skip
    assert fid_from_stats(compute_fid_stats(images), expected_reference) == pytest.approx(history[4], rel=1e-4)


def test_reference_statistics_are_recomputed_when_the_data_changes(ray_session, tmp_path):
    data = write_prepared(tmp_path / "data", photo_crops(8, 32, seed=1), shards=1)
    uri = ensure_reference_stats(str(data), 8)
    first = load_fid_stats(uri)
    written = Path(uri).stat().st_mtime_ns
    assert ensure_reference_stats(str(data), 8) == uri and Path(uri).stat().st_mtime_ns == written  # cached
    data = write_prepared(tmp_path / "data", photo_crops(12, 32, seed=1), shards=1)  # same folder, more images
    again = load_fid_stats(ensure_reference_stats(str(data), 12))
    assert not np.allclose(again.mu, first.mu)
    np.testing.assert_allclose(again.mu, compute_fid_stats(PreparedImages(str(data)).load()).mu, rtol=1e-5, atol=1e-5)
