"""Bounded memory: preparing 10x more images must not raise the job's peak memory by more than 1.5x.

The job runs in a subprocess with its own local Ray, so its raylet and workers descend from it; the
test samples the summed RSS of the driver and the workers every 50 ms (see job_rss). The same
driver first prepares N images, then 10N: one Ray and the same warm workers serve both phases, and a
marker file separates them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.prepare_job import PrepareConfig
from tests.prepare_data import encode

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
REPO = Path(__file__).resolve().parents[1]
SMALL, SIZE = 200, 512  # 10 x SMALL images of 512 x 512: 1.5 GB of decoded pixels if anything kept them

TWO_PHASES = """
import json, sys
from pathlib import Path
from dctdiff.data.prepare_job import PrepareConfig, run_prepare
small, large, marker = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
run_prepare(PrepareConfig(**small))
marker.write_text("large")
run_prepare(PrepareConfig(**large))
"""


def job_rss(driver: int) -> tuple[int, int]:
    """(summed resident bytes, number of workers) of the job's own processes: the driver and the Ray
    workers that run its tasks (``ray::...`` processes under its raylet), read from /proc. Ray's fixed
    services (GCS, raylet, dashboard and agents, about 2 GB here) do not scale with the data: left out."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline") as cmdline:
                    commands[int(entry)] = cmdline.read()
            except (OSError, IndexError):
                continue
    raylets = [pid for pid, ppid in parents.items() if ppid == driver and "raylet" in commands.get(pid, "")]
    workers = [
        pid
        for pid, ppid in parents.items()
        if ppid in raylets and commands.get(pid, "").startswith("ray::") and "Agent" not in commands[pid]
    ]
    total = 0
    for pid in [driver, *workers]:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total, len(workers)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_ten_times_more_images_use_at_most_one_and_a_half_times_the_memory(tmp_path):
    folders = {name: tmp_path / name for name in ("small", "large")}
    crops = photo_crops(8, SIZE // 2, seed=9)
    photos = [encode(Image.fromarray(p).resize((SIZE, SIZE), Image.Resampling.BICUBIC), "JPEG") for p in crops]
    for name, count in (("small", SMALL), ("large", 10 * SMALL)):
        folders[name].mkdir()
        for i in range(count):
            (folders[name] / f"{i:05d}.jpg").write_bytes(photos[i % len(photos)])
    configs = [
        json.dumps(
            asdict(
                PrepareConfig(
                    source=f"folder:{folders[name]}",
                    output=str(tmp_path / f"out-{name}"),
                    resolution=64,
                    block_size=2,
                    shard_rows=16,
                    progress=False,
                )
            )
        )
        for name in ("small", "large")
    ]
    marker = tmp_path / "phase"
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own, even if another one is running
    command = [sys.executable, "-c", TWO_PHASES, *configs, str(marker)]
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"small": 0, "large": 0}
    workers_seen = 0

    def sample() -> None:
        nonlocal workers_seen
        while job.poll() is None:
            phase = "large" if marker.exists() else "small"
            rss, workers = job_rss(job.pid)
            peaks[phase] = max(peaks[phase], rss)
            workers_seen = max(workers_seen, workers)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, _ = job.communicate(timeout=400)
    sampler.join()
    assert job.returncode == 0, output[-3000:]
    assert json.loads((tmp_path / "out-large" / "report.json").read_text())["images"]["written"] == 10 * SMALL
    small, large = peaks["small"] / 2**20, peaks["large"] / 2**20
    print(f"peak RSS of the job's processes: {small:.0f} MiB for {SMALL} images, {large:.0f} MiB for {10 * SMALL}")
    assert workers_seen >= 2 and peaks["small"] > 2**28  # the driver and its workers were measured
    assert peaks["large"] <= 1.5 * peaks["small"]
