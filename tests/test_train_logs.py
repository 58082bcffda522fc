"""The console output of `dctdiff train` a person reads: no per-epoch Ray Data lines, each step line once."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.infra.logs import configure_logging
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
    assert "INFO mlflow" not in output, output  # its database set-up and system-metrics start/stop lines
    steps = re.findall(r"step (\d+)/4 loss", output)
    assert steps == ["1", "2", "3", "4"], output


def test_mlflow_keeps_its_info_lines_unless_the_job_logs_at_debug(monkeypatch):
    import mlflow  # noqa: F401 - configures its logger from MLFLOW_LOGGING_LEVEL at import

    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "level", mlflow_logger.level)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "unset")  # records the variable's state for monkeypatch to restore
    try:
        for level, shown in [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)]:
            monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
            configure_logging(level)
            assert os.environ["MLFLOW_LOGGING_LEVEL"] == logging.getLevelName(shown)
            assert mlflow_logger.getEffectiveLevel() == shown
        monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "ERROR")  # a value already set wins
        configure_logging("INFO")
        assert mlflow_logger.getEffectiveLevel() == logging.ERROR
    finally:
        configure_logging("INFO")
