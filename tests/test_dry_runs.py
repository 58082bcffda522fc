"""`--dry-run` of sample and upsample prints the resolved settings and starts nothing."""

from __future__ import annotations

import sys

import yaml

from dctdiff.commands import sample_command, upsample_command


def test_sample_dry_run_prints_the_settings(capsys):
    assert sample_command.main(["--checkpoint", "runs/x", "--output", "out", "--num", "8", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["job"] == "sample" and printed["num"] == 8 and printed["checkpoint"] == "runs/x"
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_upsample_dry_run_prints_the_settings(capsys):
    assert upsample_command.main(["in", "out", "--factor", "4", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["job"] == "upsample" and printed["factor"] == 4 and printed["source"] == "in"
