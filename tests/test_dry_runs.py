"""`--dry-run` of every job prints the resolved settings and starts nothing; an output that cannot be
written fails every job in seconds with one line, before Ray starts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from PIL import Image

from dctdiff.commands import (
    docs_images,
    evaluate_command,
    prepare_command,
    sample_command,
    sweep_command,
    upsample_command,
)  # fmt: skip


@pytest.fixture
def unwritable(tmp_path):
    """A path below a regular file: no job can create it."""
    (tmp_path / "file.txt").write_text("x")
    return str(tmp_path / "file.txt" / "out")


def printed(capsys) -> dict:
    """The YAML a dry run wrote to stdout."""
    return yaml.safe_load(capsys.readouterr().out)


def test_sample_dry_run_prints_the_settings(capsys, no_ray):
    assert sample_command.main(["--checkpoint", "runs/x", "--output", "out", "--num", "8", "--dry-run"]) == 0
    settings = printed(capsys)
    assert settings["job"] == "sample" and settings["num"] == 8 and settings["checkpoint"] == "runs/x"


def test_upsample_dry_run_prints_the_settings(capsys, no_ray):
    assert upsample_command.main(["in", "out", "--factor", "4", "--dry-run"]) == 0
    settings = printed(capsys)
    assert settings["job"] == "upsample" and settings["factor"] == 4 and settings["source"] == "in"


def test_prepare_dry_run_prints_the_settings_and_writes_nothing(capsys, no_ray, tmp_path):
    argv = ["--source", "photos", "--output", str(tmp_path / "o"), "--preset", "demo", "--limit", "9", "--dry-run"]
    assert prepare_command.main(argv) == 0
    settings = printed(capsys)
    assert settings["job"] == "prepare" and settings["limit"] == 9 and settings["resolution"] == 32
    assert settings["block_size"] == 2 and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv,key,value",
    [
        (["fid", "a", "b", "--step", "7"], "step", 7),
        (["reconstruction", "photos:8", "--block-size", "4"], "block_size", 4),
        (["spectrum", "a", "b", "--block-size", "8"], "block_size", 8),
    ],
)
def test_evaluate_dry_runs_print_the_settings(argv, key, value, capsys, no_ray, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert evaluate_command.main([*argv, "--mlflow-uri", uri, "--dry-run"]) == 0
    settings = printed(capsys)
    assert settings["job"] == f"evaluate {argv[0]}" and settings[key] == value and settings["mlflow_uri"] == uri
    assert not (tmp_path / "mlflow.db").exists()


def test_sweep_dry_run_prints_the_plan(capsys, no_ray, tmp_path):
    argv = ["--study", "snr_scale", "--preset", "demo", "--data", str(tmp_path / "data"), "--max-steps", "40",
            "--storage", str(tmp_path / "sweeps"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--dry-run"]  # fmt: skip
    assert sweep_command.main(argv) == 0
    plan = printed(capsys)
    assert plan["job"] == "sweep" and plan["max_steps"] == 40 and plan["report_every"] == 4
    assert plan["study"] == "snr_scale" and not (tmp_path / "sweeps").exists()


def one_error_line(capsys) -> str:
    """The single line a failed job wrote to stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "job,argv",
    [
        (prepare_command, ["--source", "photos", "--preset", "demo", "--output", "{out}"]),
        (sample_command, ["--checkpoint", "runs/x", "--output", "{out}"]),
        (upsample_command, ["{folder}", "{out}"]),
        (evaluate_command, ["reconstruction", "photos:8", "--block-size", "2", "--no-mlflow", "--output", "{out}"]),
        (evaluate_command, ["spectrum", "photos:8", "photos:8", "--no-mlflow", "--output", "{out}"]),
    ],
)
def test_an_unwritable_output_fails_in_seconds_with_one_line(job, argv, unwritable, tmp_path, capsys, no_ray):
    started = time.perf_counter()
    status = job.main([a.format(out=unwritable, folder=tmp_path) for a in argv])
    assert status == 2 and time.perf_counter() - started < 10
    line = one_error_line(capsys)
    assert line.startswith("error: cannot write to --output") and "Not a directory" in line


def test_upsample_of_a_missing_folder_fails_with_one_line(tmp_path, capsys, no_ray):
    assert upsample_command.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in one_error_line(capsys) and not (tmp_path / "out").exists()


def fake_demo(folder) -> None:
    """What docs_images reads from a finished demo: samples/images.npz and reconstruction/reconstruction.png."""
    (folder / "samples").mkdir(parents=True)
    (folder / "reconstruction").mkdir()
    images = np.random.default_rng(0).integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    np.savez(folder / "samples" / "images.npz", images=images)
    Image.new("RGB", (1800, 750), "white").save(folder / "reconstruction" / "reconstruction.png")


def test_docs_images_writes_small_pngs_with_a_labelled_codec_grid(tmp_path, no_ray):
    fake_demo(tmp_path / "demo")
    assert docs_images.main(["--demo", str(tmp_path / "demo"), "--output", str(tmp_path / "docs"), "-q"]) == 0
    for name in ("samples.png", "codec_grid.png", "reconstruction.png"):
        assert 0 < (tmp_path / "docs" / name).stat().st_size <= 150_000, name
    assert Image.open(tmp_path / "docs" / "reconstruction.png").width == 800
    rows = docs_images.round_trips(
        docs_images.photo_crops(1, 64), tuple(docs_images.SHOWN_KEEPS), docs_images.SHOWN_KEEPS
    )
    assert {r.block_size for r in rows} == {2, 4} and [r.keep for r in rows if r.block_size == 4] == [1, 2, 4, 8, 16]


def test_docs_images_of_a_study_writes_only_its_curves_and_grids(tmp_path, no_ray):
    (tmp_path / "sweep").mkdir()
    Image.new("RGB", (2400, 900), "white").save(tmp_path / "sweep" / "study_curves.png")
    Image.new("RGB", (600, 300), "white").save(tmp_path / "sweep" / "study_grids.png")
    assert docs_images.main(["--study", str(tmp_path / "sweep"), "--output", str(tmp_path / "docs"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["study_curves.png", "study_grids.png"]
    assert Image.open(tmp_path / "docs" / "study_curves.png").size == (1000, 375)
    assert Image.open(tmp_path / "docs" / "study_grids.png").size == (600, 300)  # small enough: as it is


def test_docs_images_without_a_demo_says_to_run_it(tmp_path, capsys):
    assert docs_images.main(["--demo", str(tmp_path / "none"), "--output", str(tmp_path / "docs")]) == 2
    assert "run `make demo`" in one_error_line(capsys)


def test_labelled_grid_writes_each_label_left_of_its_row():
    from dctdiff.evaluation.image_grid import labelled_grid

    rows = [np.full((2, 16, 16, 3), 255, np.uint8)] * 3
    picture = labelled_grid(rows, ["a", "B=2, keep=1", "B=4, keep=16"], scale=2)
    assert picture.shape[0] == (2 + 3 * 18) * 2 and picture.shape[1] > (2 + 2 * 18) * 2
    for i in range(3):  # dark text pixels in the label column at the height of each row
        top = (2 + i * 18) * 2
        assert picture[top : top + 32, : picture.shape[1] - 76].min() < 128


def test_the_demo_codec_grid_shows_every_keep_of_b2_and_powers_of_two_of_b4(tmp_path):
    from dctdiff.commands.demo_command import codec_demo

    with Image.open(codec_demo(tmp_path, n_images=2)) as grid:
        assert grid.height == (2 + (1 + 4 + 5) * 66) * 2
