"""Checkpoints verify themselves: checksums written with them, checked on load; the newest intact one is used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dctdiff.commands.sample_command import main as sample_main
from dctdiff.infra.logs import configure_logging
from dctdiff.models.builders import build_codec, build_model, load_ema_model
from dctdiff.models.checkpoints import (
    CorruptCheckpointError,
    checkpoint_folders,
    newest_checkpoint,
    newest_intact,
    verify_checkpoint,
)
from dctdiff.models.config import build_config
from dctdiff.training.trainer import Trainer


def make_trainer() -> Trainer:
    torch.manual_seed(0)
    config = build_config("demo", overrides=["model.embed_dim=32"])
    codec = build_codec(config, eta=242.0)
    return Trainer(config, codec, build_model(config, codec), None, torch.device("cpu"))


def save(folder: Path) -> Path:
    trainer = make_trainer()
    trainer.save(folder, {"config": trainer.config.to_dict(), "eta": 242.0, "stats": {}})
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save(tmp_path_factory.mktemp("intact") / "checkpoint_000")


def copy_of(saved: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for file in saved.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def flip_bytes(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])  # the last weights, not the header
    file.write_bytes(bytes(data))


def test_a_saved_checkpoint_verifies_and_loads(saved):
    verify_checkpoint(str(saved))
    assert set(json.loads((saved / "manifest.json").read_text())["files"]) == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    model, _, state = load_ema_model(str(saved))
    assert state["step"] == 0 and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (truncate, "model.safetensors", "model.safetensors is truncated"),
        (flip_bytes, "ema.safetensors", "ema.safetensors does not match its SHA-256"),
        (lambda f: f.write_text("{not json"), "state.json", "state.json is truncated"),
        (lambda f: f.write_text('{"step": 1}'[:12].ljust(f.stat().st_size)), "state.json", "state.json does not match"),
        (Path.unlink, "optimizer.safetensors", "optimizer.safetensors is missing"),
        (Path.unlink, "manifest.json", "has no manifest.json"),
        (lambda f: f.write_text("{"), "manifest.json", "manifest.json is not valid JSON"),
    ],
)
def test_damaged_checkpoints_are_refused_naming_the_file(saved, tmp_path, damage, file, message):
    folder = copy_of(saved, tmp_path / "checkpoint_001")
    damage(folder / file)
    with pytest.raises(CorruptCheckpointError, match=message) as error:
        verify_checkpoint(str(folder))
    assert "\n" not in str(error.value) and str(folder) in str(error.value)
    with pytest.raises(CorruptCheckpointError, match=message):
        make_trainer().load(folder)


def test_flipped_weights_are_not_loaded(saved, tmp_path):
    folder = copy_of(saved, tmp_path / "checkpoint_001")
    flip_bytes(folder / "ema.safetensors")
    with pytest.raises(CorruptCheckpointError, match="ema.safetensors does not match"):
        load_ema_model(str(folder))


def test_the_newest_intact_checkpoint_is_chosen_with_a_warning(saved, tmp_path, capsys):
    run = tmp_path / "run"
    for name in ("checkpoint_2024-01-01_00-00-01.000000", "checkpoint_2024-01-01_00-00-02.000000",
                 "checkpoint_2024-01-01_00-00-03.000000"):  # fmt: skip
        copy_of(saved, run / name)
    newest, middle = run / "checkpoint_2024-01-01_00-00-03.000000", run / "checkpoint_2024-01-01_00-00-02.000000"
    truncate(newest / "model.safetensors")
    folders = checkpoint_folders(str(run))
    assert [Path(f).name for f in folders] == sorted(p.name for p in run.iterdir())
    configure_logging("INFO")
    assert newest_intact(folders) == str(middle)
    assert newest_checkpoint(str(run)) == str(middle)
    (warning, *_) = capsys.readouterr().err.splitlines()
    assert str(newest) in warning and str(middle) in warning and "model.safetensors is truncated" in warning

    for folder in folders[:-1]:
        (Path(folder) / "manifest.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint: .*truncated.*has no manifest"):
        newest_intact(folders)
    assert newest_intact(checkpoint_folders(str(tmp_path / "nothing"))) is None


def test_sampling_a_truncated_checkpoint_prints_one_error_line(saved, tmp_path, capsys):
    folder = copy_of(saved, tmp_path / "checkpoint_001")
    truncate(folder / "ema.safetensors")
    assert sample_main(["--checkpoint", str(folder), "--output", str(tmp_path / "out"), "--num", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "ema.safetensors is truncated" in err[0], err
