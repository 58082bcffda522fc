"""Every bad input of every job is one ``error: ...`` line, fast, before Ray starts (issue 25's probes)."""

from __future__ import annotations

import pytest

from dctdiff.commands import (
    demo_command, docs_images, evaluate_command, prepare_command, sample_command, sweep_command, train_command,
    upsample_command,
)  # fmt: skip
from dctdiff.commands import main as dctdiff_main


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test when anything calls ``ray.init``; Ray is as initialised afterwards as before."""
    import ray

    before = ray.is_initialized()

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert ray.is_initialized() == before


def one_error_line(capsys) -> str:
    """The single ``error: ...`` line a failed job wrote to stderr (no usage, no traceback)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def exit_status(job, argv: list[str]) -> int:
    """The status ``job.main(argv)`` returns or exits with (argparse exits)."""
    try:
        return job.main(argv)
    except SystemExit as stopped:
        return stopped.code


# --- 1. argument errors: one line, exit 2, usage only with --help -----------------------------------------

SAMPLE = ["--checkpoint", "runs/x", "--output", "out"]


@pytest.mark.parametrize(
    "job,argv,expected",
    [
        (train_command, ["--max-steps", "-5"], "argument --max-steps: must be >= 1, got -5"),
        (train_command, ["--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (train_command, ["--workers", "-1"], "argument --workers: must be >= 1, got -1"),
        (train_command, ["--dry-run", "--show-batches", "2"], "--show-batches needs --dry-run and --data"),
        (sample_command, [*SAMPLE, "--sampler", "bogus"], "argument --sampler: invalid choice: 'bogus'"),
        (sample_command, [*SAMPLE, "--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
        (sample_command, ["--output", "out"], "the following arguments are required: --checkpoint"),
        (prepare_command, ["--source", "photos", "--output", "o", "--dtype", "float64"], "invalid choice: 'float64'"),
        (prepare_command, ["--source", "photos", "--output", "o"], "give --preset"),
        (evaluate_command, ["fid", "a", "--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
        (evaluate_command, ["bogus"], "invalid choice: 'bogus'"),
        (sweep_command, ["--study", "lr", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (upsample_command, ["in", "out", "--factor", "3"], "argument --factor: invalid choice: 3"),
        (demo_command, ["--images", "many"], "argument --images: invalid int value: 'many'"),
        (docs_images, ["--max-kb", "0"], "argument --max-kb: must be >= 1, got 0"),
    ],
)
def test_an_argument_error_is_one_line_and_exit_2(job, argv, expected, capsys, no_ray):
    assert exit_status(job, argv) == 2
    line = one_error_line(capsys)
    assert expected in line and "--help" in line  # where the usage is


def test_help_still_prints_the_usage(capsys):
    assert exit_status(sample_command, ["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dctdiff sample")


def test_an_unknown_subcommand_is_one_error_line(capsys):
    assert dctdiff_main(["bogus"]) == 2
    assert "unknown subcommand 'bogus'" in one_error_line(capsys)
