"""The small finished training runs that several test modules read, trained once per test session.

Each Ray Train run costs about a minute on a 2-core machine, almost all of it start-up; the suite used to
train seven runs of this size for checks that one set of runs can serve:

- ``straight``: `python -m dctdiff train` in a fresh process (its own local Ray), 6 steps, run from an
  unrelated folder as a person runs it: its console output (tests/test_train_logs.py), its MLflow run
  (tests/test_mlflow_run.py) and the losses an exact resume must repeat (tests/test_train_pipeline.py);
- ``split``: the same training in this process through ``file://`` URIs (data and storage), stopped at
  step 4; its newest checkpoint is then truncated and ``--resume`` continues to step 6 from the intact
  step-2 checkpoint (tests/test_train_pipeline.py, tests/test_uris.py).

Both read the same 16 bundled photos, prepared once through a ``file://`` URI and once to a plain path.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dctdiff.commands.prepare_command import main as prepare_main
from dctdiff.commands.train_command import main as train_main

IMAGES = 16
STEPS = 6
SMALL = [
    "--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2",
    "--set", "cadence.log_every=1", "--set", "cadence.checkpoint_every=2", "--set", "cadence.keep_checkpoints=2",
    "--set", "cadence.sample_every=3", "--set", "cadence.sample_count=4", "--set", "cadence.sample_nfe=3",
    "--set", "cadence.fid_every=0",
]  # fmt: skip


@dataclass(frozen=True)
class SmallRuns:
    """Where the runs are and what they printed."""

    root: Path
    mlflow_uri: str  # both runs' MLflow store (sqlite)
    straight_output: str  # stdout + stderr of the `dctdiff train` process
    truncated: Path  # the split run's step-4 checkpoint, truncated before the resume
    intact: Path  # its step-2 checkpoint, which the resume started from
    resume_output: str  # what the resume wrote to stderr

    def uri(self, relative: str) -> str:
        return (self.root / relative).as_uri()

    def path(self, relative: str) -> str:
        return str(self.root / relative)

    @property
    def runs(self) -> Path:
        return self.root / "runs"


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))


def train_small_runs(root: Path) -> SmallRuns:
    """Prepare the photos, train ``straight`` in a subprocess and ``split`` here; see the module docstring."""
    mlflow_uri = f"sqlite:///{root}/mlflow.db"
    photos = ["--source", "photos", "--limit", str(IMAGES), "--preset", "demo", "--no-progress"]
    assert prepare_main([*photos, "--output", (root / "data").as_uri()]) == 0
    assert prepare_main([*photos, "--output", str(root / "data-path")]) == 0

    command = [
        sys.executable, "-m", "dctdiff", "train", "--data", str(root / "data-path"), *SMALL, "--max-steps", str(STEPS),
        "--storage", str(root / "runs"), "--mlflow-uri", mlflow_uri, "--name", "straight",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as on a laptop
    (root / "elsewhere").mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=root / "elsewhere")
    straight_output = done.stdout + done.stderr
    assert done.returncode == 0, straight_output[-3000:]

    split = ["--data", (root / "data").as_uri(), *SMALL, "--storage", (root / "runs").as_uri(), "--mlflow-uri",
             mlflow_uri, "--name", "split"]  # fmt: skip
    assert train_main([*split, "--max-steps", "4"]) == 0
    intact, truncated = _checkpoints(root / "runs" / "split")
    model = truncated / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    resume_output = io.StringIO()
    with contextlib.redirect_stderr(resume_output):  # the job's log lines go to the current sys.stderr
        assert train_main([*split, "--max-steps", str(STEPS), "--resume"]) == 0
    return SmallRuns(root, mlflow_uri, straight_output, truncated, intact, resume_output.getvalue())
