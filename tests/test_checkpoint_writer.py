"""Rank 0's checkpoints are written by a background thread: training goes on during the write, the next
checkpoint waits for the previous one, Ray Train gets only complete ones, and a write that dies midway
leaves the previous checkpoint the newest intact one."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.checkpoints import checkpoint_folders, newest_intact, verify_checkpoint, write_checkpoint
from dctdiff.models.config import build_config
from dctdiff.training.checkpoint_writer import BackgroundCheckpoints
from dctdiff.training.dataset_info import DatasetInfo
from dctdiff.training.trainer import Batch, Trainer

INFO = DatasetInfo("file:///shards", 8, 0, 32, 2, 242.0, "ycbcr420", "coefficients", {}, {})
EXTRA = {"config": None, "eta": 242.0, "colour": "ycbcr420", "stats": {}}


def make_trainer() -> Trainer:
    torch.manual_seed(0)
    config = build_config("demo", overrides=["model.embed_dim=32", "optim.warmup_steps=1"])
    codec = build_codec(config, eta=242.0)
    return Trainer(config, codec, build_model(config, codec), None, torch.device("cpu"))


def step(trainer: Trainer) -> None:
    generator = torch.Generator().manual_seed(trainer.step)
    tokens = torch.randn(8, *trainer.codec_token_shape, generator=generator)
    trainer.train_step(Batch(tokens, None, [f"img-{i}" for i in range(8)]))


def contents(trainer: Trainer) -> dict:
    """Independent copies of what a checkpoint of ``trainer`` must hold now."""
    tensors, state = trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()})
    return {group: {k: v.detach().clone() for k, v in values.items()} for group, values in tensors.items()}, state


def held_writer(release: threading.Event, started: threading.Event | None = None):
    """A write that waits for ``release`` (a slow disk), then writes the real checkpoint."""

    def write(folder, tensors, state):
        if started is not None:
            started.set()
        assert release.wait(30)
        write_checkpoint(folder, tensors, state)

    return write


def assert_holds(folder: str, expected) -> None:
    """The checkpoint in ``folder`` verifies and loads into a fresh trainer as exactly ``expected``."""
    verify_checkpoint(folder)
    tensors, state = expected
    loaded = make_trainer()
    assert loaded.load(folder)["step"] == state["step"]
    got, _ = loaded.checkpoint_contents(EXTRA)
    for group, values in tensors.items():
        assert set(got[group]) == set(values)
        for key, value in values.items():
            assert torch.equal(got[group][key], value), (group, key)


def test_training_goes_on_while_a_slow_write_runs_and_the_checkpoint_is_the_state_at_its_step(tmp_path):
    trainer = make_trainer()
    step(trainer)
    expected = contents(trainer)
    release, started = threading.Event(), threading.Event()
    writer = BackgroundCheckpoints(held_writer(release, started), folder=lambda: str(tmp_path / "c1"))
    begin = time.monotonic()
    writer.start(*trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()}))
    assert time.monotonic() - begin < 5 and started.wait(5)  # returned while the write waits
    for _ in range(2):  # the training steps run during the write and change the weights in place
        step(trainer)
        assert writer.ready() is None
    assert not torch.equal(
        trainer.model.state_dict()["decoder_pred.weight"], expected[0]["model"]["decoder_pred.weight"]
    )
    release.set()
    folder = writer.ready(wait=True)
    assert folder == str(tmp_path / "c1") and writer.ready() is None  # handed over once
    assert_holds(folder, expected)  # the snapshot of step 1, not the weights of step 3


def test_the_next_checkpoint_waits_for_the_previous_write_and_each_holds_its_own_step(tmp_path):
    trainer = make_trainer()
    names = iter(["c1", "c2"])
    first, second = threading.Event(), threading.Event()
    releases = iter([first, second])
    writer = BackgroundCheckpoints(lambda f, t, s: held_writer(next(releases))(f, t, s),
                                   folder=lambda: str(tmp_path / next(names)))  # fmt: skip
    step(trainer)
    at_one = contents(trainer)
    writer.start(*trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()}))
    step(trainer)
    at_two = contents(trainer)
    starting = threading.Thread(
        target=writer.start, args=trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()})
    )
    starting.start()
    time.sleep(0.5)
    assert starting.is_alive()  # waits for the first write (one set of host buffers)
    first.set()
    starting.join(10)
    assert not starting.is_alive()
    assert writer.ready() == str(tmp_path / "c1")  # the first, while the second is written
    second.set()
    assert writer.ready(wait=True) == str(tmp_path / "c2")
    assert_holds(str(tmp_path / "c1"), at_one)
    assert_holds(str(tmp_path / "c2"), at_two)


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint_the_newest_intact(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    names = iter(["checkpoint_000001", "checkpoint_000002"])
    writer = BackgroundCheckpoints(folder=lambda: str(run / next(names)))
    trainer = make_trainer()
    step(trainer)
    writer.start(*trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()}))
    previous = writer.ready(wait=True)
    step(trainer)
    real_write = storage.write_bytes

    def dying_write(uri, data):  # the disk fills after the model file
        if not uri.endswith("model.safetensors"):
            raise OSError("No space left on device")
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", dying_write)
    writer.start(*trainer.checkpoint_contents({**EXTRA, "config": trainer.config.to_dict()}))
    with pytest.raises(OSError, match="No space left"):
        writer.ready(wait=True)
    partial = run / "checkpoint_000002"
    assert (partial / "model.safetensors").exists() and not (partial / "manifest.json").exists()
    configure_logging("INFO")
    assert newest_intact(checkpoint_folders(str(run))) == previous  # the checksum fallback skips the partial one
    assert "checkpoint_000002 has no manifest.json" in capsys.readouterr().err


def test_rank_zero_attaches_a_checkpoint_to_the_first_report_after_its_write_and_waits_at_the_last(monkeypatch):
    """``report`` never hands Ray an incomplete folder: the step-2 checkpoint, still being written at its own
    step, goes with the next report; the last step waits for its write. Other ranks attach nothing."""
    import ray.train

    from dctdiff.training.worker_loop import report

    calls = []

    def fake_report(metrics, checkpoint=None, **options):
        if checkpoint is not None:
            verify_checkpoint(checkpoint.path)  # every file and the manifest are written before the hand-over
        calls.append((metrics["step"], checkpoint, options))

    monkeypatch.setattr(ray.train, "report", fake_report)
    trainer = make_trainer()
    release = threading.Event()
    checkpoints = BackgroundCheckpoints(held_writer(release))
    report(trainer, {"step": 2}, save=True, last=False, rank=0, info=INFO, checkpoints=checkpoints)
    report(trainer, {"step": 2}, save=True, last=False, rank=1, info=INFO, checkpoints=BackgroundCheckpoints())
    release.set()
    report(trainer, {"step": 3}, save=False, last=True, rank=0, info=INFO, checkpoints=checkpoints)
    (two, none, early_options), (_, other, other_options), (three, checkpoint, options) = calls
    assert (two, none, early_options) == (2, None, {}) and other is None and other_options == {}
    assert three == 3 and options == {"checkpoint_upload_mode": ray.train.CheckpointUploadMode.ASYNC,
                                      "delete_local_checkpoint_after_upload": True}  # fmt: skip
    assert Path(checkpoint.path).is_dir()  # left for Ray's upload thread, which deletes it
    assert '"eta": 242.0' in (Path(checkpoint.path) / "state.json").read_text()
    shutil.rmtree(checkpoint.path)
