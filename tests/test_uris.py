"""The pipeline with file:// URIs for every path (data, output, storage, image sets): the same code path
as s3:// or gs:// (pyarrow filesystems), checked against plain local paths and independent references.
The data and the trained, resumed run are those of tests/small_runs.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from dctdiff.commands.evaluate_command import main as evaluate_main
from dctdiff.commands.sample_command import main as sample_main
from dctdiff.core.codec import DCTCodec
from dctdiff.data import shards
from dctdiff.data.bundled_photos import photo_crops
from tests.small_runs import IMAGES, STEPS

pytestmark = pytest.mark.slow


def test_prepare_through_a_uri_writes_the_dataset_a_path_does(small_runs):
    ids, labels, coefficients = zip(*(shards.read_shard(f) for f in shards.shard_files(small_runs.uri("data"))))
    ids, coefficients = [i for part in ids for i in part], np.concatenate(coefficients)
    reference = DCTCodec(32, 2, 4, dtype=torch.float64).analyze(photo_crops(IMAGES, 32, seed=0)).numpy()
    assert ids == [f"photos-s0/{i:06d}" for i in range(IMAGES)] and np.concatenate(labels).tolist() == [-1] * IMAGES
    np.testing.assert_allclose(coefficients.astype(np.float64), reference, rtol=1e-3, atol=1e-2)  # float16 shards
    by_path = np.concatenate([shards.read_shard(f)[2] for f in shards.shard_files(small_runs.path("data-path"))])
    np.testing.assert_array_equal(coefficients, by_path)
    stats = [json.loads(Path(small_runs.path(d), "stats.json").read_text()) for d in ("data", "data-path")]
    assert stats[0] == stats[1] and stats[0]["counts"]["written"] == IMAGES


def test_train_checkpoints_and_resumes_under_a_uri(small_runs):
    run = small_runs.runs / "split"
    record = json.loads((run / "dctdiff_run.json").read_text())
    newest = max(c for c in run.glob("checkpoint_*") if c.is_dir())
    assert json.loads((newest / "state.json").read_text())["step"] == STEPS
    client = MlflowClient(small_runs.mlflow_uri)
    mlflow_run = client.get_run(record["mlflow_run_id"])  # one run across the resume
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["data.rows"] == str(IMAGES)
    assert sorted(set(m.step for m in client.get_metric_history(record["mlflow_run_id"], "loss"))) == [1, 2, 3, 4, 5, 6]
    assert list(small_runs.root.rglob(".*.tmp")) == []  # no temporary left by storage.atomic_path


def test_sample_writes_the_same_images_to_a_uri_as_to_a_path(small_runs):
    checkpoint = str(small_runs.runs / "split")
    common = ["--checkpoint", checkpoint, "--num", "3", "--nfe", "2", "--batch-size", "3"]
    assert sample_main([*common, "--output", small_runs.uri("samples")]) == 0
    assert sample_main([*common, "--output", small_runs.path("samples-path")]) == 0
    by_uri, by_path = (np.load(Path(small_runs.path(d), "images.npz")) for d in ("samples", "samples-path"))
    np.testing.assert_array_equal(by_uri["images"], by_path["images"])
    assert by_uri["seeds"].tolist() == [0, 1, 2]
    for seed, image in zip(by_uri["seeds"], by_uri["images"]):
        png = Path(small_runs.path("samples"), f"{seed:06d}.png").read_bytes()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)


def test_sample_reads_a_checkpoint_uri(small_runs):
    assert sample_main(["--checkpoint", small_runs.uri("runs/split"), "--num", "1", "--nfe", "2", "--output",
                        small_runs.path("samples-from-uri")]) == 0  # fmt: skip


def test_evaluate_reads_image_sets_through_uris(small_runs):
    """The URI and the path name identical datasets (checked above), so their FID is 0."""
    assert evaluate_main(["fid", small_runs.uri("data"), small_runs.path("data-path"), "--mlflow-uri",
                          small_runs.mlflow_uri, "--experiment", "uris", "--limit", "4", "--actors", "1"]) == 0  # fmt: skip
    client = MlflowClient(small_runs.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("uris").experiment_id])
    assert run.data.metrics["fid"] == pytest.approx(0.0, abs=1e-3)
