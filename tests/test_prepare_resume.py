"""Kill the prepare job with SIGKILL part-way, run the same command again: no duplicated or missing rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dctdiff.commands.prepare_command import main
from dctdiff.data.bundled_photos import photo_crops
from tests.prepare_data import encode
from tests.test_prepare import read_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
IMAGES, SHARD_ROWS = 150, 3


def test_sigkill_then_rerun_finishes_without_duplicates_or_gaps(ray_session, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    photos = [encode(Image.fromarray(p), "JPEG", quality=90) for p in photo_crops(10, 256, seed=8)]
    for i in range(IMAGES):
        (source / f"{i:04d}.jpg").write_bytes(photos[i % 10])

    def argv(output: Path) -> list[str]:
        options = ["--resolution", "64", "--block-size", "2", "--shard-rows", str(SHARD_ROWS), "--no-progress"]
        return ["--source", f"folder:{source}", "--output", str(output), *options]

    assert main(argv(tmp_path / "reference")) == 0
    reference = read_rows(tmp_path / "reference")
    assert len(reference) == IMAGES

    output, partitions = tmp_path / "killed", IMAGES // SHARD_ROWS
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "pipelines/prepare.py", *argv(output)]
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((output / "_parts").glob("*.npz.z"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.kill()  # SIGKILL: no clean-up of any kind
    job.wait()
    done = len(list((output / "_parts").glob("*.npz.z")))
    assert 3 <= done < partitions, f"the kill came too late or never ({done} of {partitions} partitions done)"
    assert not (output / "stats.json").exists()

    time.sleep(1.0)  # let Ray reap the killed driver's tasks (a straggler would rewrite identical files)
    assert main(argv(output)) == 0
    rows = read_rows(output)  # asserts that no id appears twice
    assert rows.keys() == reference.keys()
    assert all(rows[i][0] == reference[i][0] and np.array_equal(rows[i][1], reference[i][1]) for i in rows)
    assert (output / "stats.json").read_text() == (tmp_path / "reference" / "stats.json").read_text()
    assert len(list((output / "coefficients").glob("*.parquet"))) == partitions
    assert not [p for p in output.rglob(".*") if p.is_file()]  # no temporary file survives
