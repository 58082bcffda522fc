"""The console output of `dctdiff train` a person reads: no per-epoch Ray Data lines, each step line once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dctdiff.data.bundled_photos import photo_crops
from tests.prepared import write_prepared

pytestmark = pytest.mark.slow


def test_tiny_training_output_has_no_ray_data_chatter_and_each_step_once(tmp_path):
    data = write_prepared(tmp_path / "data", photo_crops(32, 32, seed=0))
    command = [
        sys.executable, "-m", "dctdiff", "train", "--data", str(data), "--storage", str(tmp_path / "runs"),
        "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--name", "logs", "--max-steps", "4",
        "--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "cadence.log_every=1",
        "--set", "cadence.sample_every=0", "--set", "cadence.fid_every=0", "--set", "cadence.checkpoint_every=2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "SplitCoordinator" not in output, output
    assert "Reporting training result" not in output, output
    steps = re.findall(r"step (\d+)/4 loss", output)
    assert steps == ["1", "2", "3", "4"], output
