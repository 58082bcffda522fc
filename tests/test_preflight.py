"""What a rank would otherwise only meet at step 1 is checked before Ray starts: the per-worker batch rule
(``config.split_batch``, by train and sweep alike, and the trainer cuts its micro-batches by the same rule),
the labels of a class-conditional run and the rows of the FID reference."""

from __future__ import annotations

import time

import pytest

from dctdiff.models.config import BatchSplit, ConfigError, split_batch


@pytest.mark.parametrize(
    ("batch", "workers", "micro", "expected"),
    [
        (256, 8, 4, BatchSplit(32, 8)),
        (256, 1, 64, BatchSplit(256, 4)),
        (24, 3, 8, BatchSplit(8, 1)),
        (7, 7, 1, BatchSplit(1, 1)),
    ],
)
def test_a_batch_that_splits_gives_the_per_worker_and_micro_batch_sizes(batch, workers, micro, expected):
    assert split_batch(batch, workers, micro) == expected
    assert expected.per_worker * workers == batch and expected.micro_batch * micro == expected.per_worker


@pytest.mark.parametrize(
    ("batch", "workers", "micro", "message"),
    [
        (
            256,
            8,
            64,
            r"optim.micro_batches 64 must divide the per-worker batch 32 \(optim.batch_size 256 / 8 workers\)",
        ),
        (24, 4, 4, "optim.micro_batches 4 must divide the per-worker batch 6"),
        (24, 5, 1, "optim.batch_size 24 must be divisible by --workers 5"),
        (24, 1, 0, "optim.micro_batches must be >= 1, got 0"),
    ],
)
def test_a_batch_that_does_not_split_is_one_line_saying_what_to_change(batch, workers, micro, message):
    with pytest.raises(ConfigError, match=message) as error:
        split_batch(batch, workers, micro)
    assert "\n" not in str(error.value)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# The case at a smaller size: the global batch divides by the workers and by the micro-batches, so
# it passed validation and plan_run, then every rank raised at step 1, three times over (max_failures=2).
BAD_SPLIT = ["--workers", "8", "--set", "optim.batch_size=64", "--set", "optim.micro_batches=16"]


def test_train_refuses_micro_batches_that_do_not_divide_a_workers_share_before_ray_starts(tmp_path, capsys, no_ray):
    from dctdiff.commands.train_command import main
    from dctdiff.data.bundled_photos import photo_crops
    from tests.prepared import write_prepared

    data = write_prepared(tmp_path / "data", photo_crops(64, 32, seed=0))  # enough rows for one global batch
    start = time.monotonic()
    where = ["--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(["--data", str(data), *where, *BAD_SPLIT]) == 2
    assert "optim.micro_batches 16 must divide the per-worker batch 8" in _one_error_line(capsys)
    assert time.monotonic() - start < 30


def test_sweep_refuses_it_for_the_base_config_and_for_a_swept_value(tmp_path, capsys, no_ray):
    from dctdiff.commands.sweep_command import main

    common = ["--data", str(tmp_path / "data"), "--storage", str(tmp_path / "runs"), "--mlflow-uri",
              f"sqlite:///{tmp_path}/mlflow.db"]  # fmt: skip
    assert main(["--study", "lr", *common, *BAD_SPLIT]) == 2
    assert "optim.micro_batches 16 must divide the per-worker batch 8" in _one_error_line(capsys)
    space = tmp_path / "micro.yaml"
    space.write_text("space:\n  optim.micro_batches: {grid: [1, 16]}\n")
    assert main(["--study", str(space), *common, "--workers", "8", "--set", "optim.batch_size=64"]) == 2
    assert "value 16 is invalid: optim.micro_batches 16 must divide the per-worker batch 8" in _one_error_line(capsys)


def test_the_trainer_cuts_micro_batches_by_the_same_rule():
    import torch

    from dctdiff.models.builders import build_codec, build_model
    from dctdiff.models.config import build_config
    from dctdiff.training.trainer import Batch, Trainer

    config = build_config("demo", overrides=["model.embed_dim=32", "optim.micro_batches=4"])
    codec = build_codec(config, eta=242.0)
    trainer = Trainer(config, codec, build_model(config, codec), None, torch.device("cpu"))
    tokens = torch.zeros(6, codec.num_tokens, codec.token_dim)
    with pytest.raises(ConfigError, match="optim.micro_batches 4 must divide the per-worker batch 6"):
        trainer.train_step(Batch(tokens, None, [f"img-{i}" for i in range(6)]))


def _plan(tmp_path, labels, overrides: list[str], images: int = 16):
    """plan_run of a small class-conditional demo run on ``images`` photos with ``labels``."""
    from dctdiff.data.bundled_photos import photo_crops
    from dctdiff.models.config import build_config
    from dctdiff.training.train_job import LaunchOptions, plan_run
    from tests.prepared import write_prepared

    data = write_prepared(tmp_path / "data", photo_crops(images, 32, seed=0), labels=labels)
    config = build_config("demo", overrides=["optim.batch_size=2", "data.class_conditional=true", *overrides])
    return plan_run(config, LaunchOptions(str(data), storage=str(tmp_path / "runs")))


@pytest.mark.parametrize(
    ("labels", "num_classes", "message"),
    [
        (None, 4, r"has unlabelled images \(label -1\), but data.class_conditional is on"),
        (list(range(8)) * 2, 4, "has labels up to 7, but data.num_classes=4: set data.num_classes=8"),
    ],
)
def test_labels_outside_the_label_embedding_are_refused_by_plan_run(tmp_path, labels, num_classes, message):
    """Before: every rank raised an IndexError in the label embedding at step 1 (on CUDA a device assert
    that surfaced only at the next sync), and Ray Train retried it."""
    with pytest.raises(ValueError, match=message):
        _plan(tmp_path, labels, [f"data.num_classes={num_classes}"])


def test_labels_that_fit_the_embedding_plan(tmp_path):
    assert _plan(tmp_path, list(range(8)) * 2, ["data.num_classes=8"]).info.rows == 16


def _reference_plan(tmp_path, reference_images, resolution: int = 32, space: str = "dct"):
    """plan_run of an unconditional demo run on 16 photos (in ``space``: the pixel arm reads the stored
    pixels), FID against ``reference_images`` others, prepared without pixels."""
    from dctdiff.data.bundled_photos import photo_crops
    from dctdiff.models.config import build_config
    from dctdiff.training.train_job import LaunchOptions, plan_run
    from tests.prepared import write_prepared

    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0), store_pixels=space == "pixel")
    held_out = write_prepared(tmp_path / "held-out", photo_crops(reference_images, resolution, seed=1))
    config = build_config("demo", overrides=["optim.batch_size=2", "cadence.fid_every=2", f"data.space={space}"])
    options = LaunchOptions(str(data), storage=str(tmp_path / "runs"), fid_reference=str(held_out))
    return plan_run(config, options)


def test_a_relative_data_folder_gives_absolute_shard_paths(tmp_path, monkeypatch):
    """Before: `--data fm-train` listed `fm-train/coefficients/part-*.parquet`, which the Ray Train workers
    (whose working folder is the run's artifact folder) could not open: FirstStepError FileNotFoundError."""
    from dctdiff.data.bundled_photos import photo_crops
    from dctdiff.models.config import build_config
    from dctdiff.training.dataset_info import load_dataset_info
    from tests.prepared import write_prepared

    write_prepared(tmp_path / "data", photo_crops(4, 32, seed=0))
    monkeypatch.chdir(tmp_path)
    info = load_dataset_info("data", build_config("demo"))
    assert info.shard_files and all(
        path.startswith(str(tmp_path / "data" / "coefficients")) for path in info.shard_files
    )


@pytest.mark.parametrize("space", ["dct", "pixel"])
def test_a_held_out_fid_reference_is_planned_with_its_own_rows(tmp_path, space):
    """Before: the pixel arm refused a reference prepared without --store-pixels (FID decodes the
    reference's coefficients in either space, so it needs no pixels); make study's pixel trials failed so."""
    plan = _reference_plan(tmp_path, 6, space=space)
    assert (plan.info.rows, plan.reference.rows) == (16, 6)
    assert plan.reference.shards_uri.startswith(str(tmp_path / "held-out"))
    assert (plan.info.column, plan.reference.column) == (
        {"dct": "coefficients", "pixel": "pixels"}[space],
        "coefficients",
    )


@pytest.mark.parametrize(
    ("images", "resolution", "message"),
    [
        (3, 32, "FID and KID during training need at least 4 images in --fid-reference .*held-out, got 3$"),
        (
            6,
            16,
            r"--fid-reference .*held-out holds 16x16 images with block size 2, but the config wants data.resolution=32",
        ),
    ],
)
def test_a_fid_reference_too_small_or_prepared_otherwise_is_refused_naming_the_flag(
    tmp_path, images, resolution, message
):
    with pytest.raises(ValueError, match=message):
        _reference_plan(tmp_path, images, resolution)


def test_too_few_images_for_the_fid_reference_are_refused_before_ray_starts(tmp_path):
    with pytest.raises(ValueError, match="FID and KID during training need at least 4 training images, got 3"):
        _plan(tmp_path, [0, 1, 2], ["data.num_classes=3", "cadence.fid_every=2"], images=3)
