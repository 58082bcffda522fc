"""The console output of `dctdiff train` a person reads: no per-epoch Ray Data lines, each step line once."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dctdiff.infra.logs import configure_logging

pytestmark = pytest.mark.slow


def test_tiny_training_output_has_no_ray_data_chatter_and_each_step_once(small_runs):
    """The console output of the `dctdiff train` process of tests/small_runs.py (6 steps)."""
    output = small_runs.straight_output
    assert "SplitCoordinator" not in output, output
    assert "logging_progress" not in output, output
    assert "Reporting training result" not in output, output
    assert "INFO mlflow" not in output, output  # its database set-up and system-metrics start/stop lines
    # Ray Train's routine lines, MLflow's advice and progress bar when the final model is logged
    chatter_lines = ("Checkpoint successfully created", "Moving model to device", "An input example was not provided",
                     "Downloading artifacts")  # fmt: skip
    for chatter in chatter_lines:
        assert chatter not in output, output
    steps = re.findall(r"step (\d+)/6 loss", output)
    assert steps == ["1", "2", "3", "4", "5", "6"], output


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


def test_ray_data_imported_before_the_job_set_its_logging_still_keeps_info_off_the_console():
    """The sweep job imports ray.tune (and so ray.data) before it starts Ray: before the fix its driver
    printed Ray Data's `logging_progress` lines every few seconds while the FID reference was computed."""
    probe = (
        "import logging, ray.tune, ray.data\n"
        "from dctdiff.infra.ray_cluster import quiet_ray_data\n"
        "quiet_ray_data()\n"
        "console = [h for h in logging.getLogger('ray.data').handlers if 'File' not in type(h).__name__]\n"
        "print(sorted(logging.getLevelName(h.level) for h in console))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_LOGGING_CONFIG"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['WARNING']", done.stdout
