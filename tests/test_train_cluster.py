"""Training across Ray nodes (ray.cluster_utils.Cluster) and through `ray job submit` on a real head."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from dctdiff.commands.train_command import parse_args
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.infra.ray_cluster import keep_ray_on_loopback
from dctdiff.training.train_job import train
from tests.prepared import write_prepared

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2", "--set", "cadence.sample_every=0",
        "--set", "cadence.log_every=1", "--set", "optim.lr=1e-3"]  # fmt: skip


def test_two_nodes_train_like_one_worker_with_the_same_global_batch(tmp_path):
    """DDP over 2 nodes: the run's end-of-training check finds both ranks with identical weights (it raises
    otherwise), and the weights equal those of a 1-worker run (global batch 8)."""
    import ray
    from ray.cluster_utils import Cluster

    data = write_prepared(tmp_path / "data", photo_crops(8, 32, seed=5))  # one global batch per step
    ray.shutdown()
    keep_ray_on_loopback()
    common = ["--data", str(data), *TINY, "--set", "optim.batch_size=8", "--max-steps", "3",
              "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", str(tmp_path / "runs")]  # fmt: skip
    weights = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    try:
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        for workers in (2, 1):  # SPREAD: the 2 workers on the 2 nodes; then the 1-worker reference
            request = parse_args([*common, "--workers", str(workers), "--placement", "SPREAD", "--name", f"w{workers}"])
            result, _ = train(request.config, request.options, request.tracking)
            assert result.error is None  # includes check_ranks_agree: identical weights on every rank
            weights[workers] = load_file(Path(result.checkpoint.path) / "model.safetensors")
    finally:
        ray.shutdown()
        cluster.shutdown()
    rank0 = weights[2]
    for name in rank0:
        torch.testing.assert_close(rank0[name], weights[1][name], rtol=1e-4, atol=1e-5)
    # and training moved the weights at all
    assert any(not torch.equal(rank0[n], torch.zeros_like(rank0[n])) for n in rank0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_processes_mentioning(text: str) -> None:
    """Stop one Ray head started by `ray start` (all its processes mention its temp dir); `ray stop`
    would stop every Ray on the machine."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def test_ray_job_submit_trains_and_logs(tmp_path):
    """`ray start --head` on loopback + `ray job submit --working-dir .`, as the README says."""
    import ray

    ray.shutdown()
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=6))
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port, dashboard = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    head = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
            "--temp-dir", temp_dir, "--include-dashboard", "true", "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                  "--working-dir", str(REPO), "--", "python", "pipelines/train.py", "--data", str(data), *TINY,
                  "--set", "optim.batch_size=8", "--max-steps", "4", "--set", "cadence.checkpoint_every=2",
                  "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri, "--name", "submitted"]  # fmt: skip
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=420)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        client = MlflowClient(uri)
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.info.status == "FINISHED" and run.info.run_name == "submitted"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
        checkpoints = [p for p in (tmp_path / "runs" / "submitted").iterdir() if p.is_dir()]
        assert any(json.loads((p / "state.json").read_text())["step"] == 4 for p in checkpoints)
    finally:
        kill_processes_mentioning(temp_dir)
        time.sleep(1)
        shutil.rmtree(temp_dir, ignore_errors=True)
