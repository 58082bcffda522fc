"""The prepare job on a 2-node Ray cluster (ray.cluster_utils.Cluster, loopback only) gives the same
rows, rejections and statistics as on one node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from dctdiff.data.prepare_job import PrepareConfig, run_prepare
from tests.prepare_data import BOMB_SIDE, write_image_folder
from tests.test_prepare import read_rows

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: one Ray per process, and this one must start its own two nodes.
TWO_NODES = """
import json, sys
from dctdiff.infra.ray_cluster import keep_ray_on_loopback
keep_ray_on_loopback()
import ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                        "include_dashboard": False})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
ray.init(address=cluster.address)
from dctdiff.data.prepare_job import PrepareConfig, run_prepare
report = run_prepare(PrepareConfig(**json.loads(sys.argv[1])))
print("NODES", report["nodes"], len([n for n in ray.nodes() if n["Alive"]]))
ray.shutdown()
cluster.shutdown()
"""


def test_two_node_cluster_matches_single_node(ray_session, tmp_path):
    root = tmp_path / "images"
    write_image_folder(root)
    options = dict(
        source=f"folder:{root}", resolution=32, block_size=2, max_pixels=BOMB_SIDE**2 - 1, shard_rows=2, progress=False
    )
    single = run_prepare(PrepareConfig(output=str(tmp_path / "single"), **options))

    config = asdict(PrepareConfig(output=str(tmp_path / "cluster"), **options))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "-c", TWO_NODES, json.dumps(config)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NODES 2 2" in result.stdout, result.stdout  # both nodes alive and both ran partitions

    cluster = json.loads((tmp_path / "cluster" / "report.json").read_text())
    assert cluster["rejected"] == single["rejected"] and cluster["images"] == single["images"]
    one, two = read_rows(tmp_path / "single"), read_rows(tmp_path / "cluster")
    assert one.keys() == two.keys()
    assert all(one[i][0] == two[i][0] and np.array_equal(one[i][1], two[i][1]) for i in one)
    assert (tmp_path / "single" / "stats.json").read_text() == (tmp_path / "cluster" / "stats.json").read_text()
