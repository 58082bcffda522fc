"""A Ray cluster lost while a job runs against it (``--address``): one ``error:`` line naming the address and
what to try, exit 1, before Ray's own exit and without a traceback (issue 25, deliverable 4)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray.exceptions
import ray.train
import torch

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.infra import ray_cluster
from dctdiff.infra.ray_cluster import ClusterLostError, connection_lost, ends_on_lost_cluster, local_ray_environment
from dctdiff.training.failure_record import FirstStepError
from dctdiff.training.step_metrics import NonFiniteLossError
from tests.prepared import write_prepared
from tests.test_train_cluster import free_port, kill_processes_mentioning

REPO = Path(__file__).resolve().parents[1]
RAY_RECONNECT_S = 20  # Ray's own limit in the jobs below (RAY_gcs_rpc_server_reconnect_timeout_s); theirs is 10 s
TINY = ["--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "cadence.sample_every=0",
        "--set", "cadence.fid_every=0", "--max-steps", "100000"]  # fmt: skip
TRAINING = "Started training worker group"  # Ray Train's controller, forwarded to the job's stderr


# --- the classifier -------------------------------------------------------------------------------------


def closed_endpoint() -> tuple[str, int]:
    """A loopback endpoint nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()


def task_error(cause: Exception) -> Exception:
    """``cause`` raised in a Ray task, as ``ray.get`` re-raises it (its class derives from the cause's too)."""
    return ray.exceptions.RayTaskError("train_loop", "Traceback ...", cause).as_instanceof_cause()


LOST = [
    ray.exceptions.RaySystemError("Failed to connect to GCS"),
    ray.exceptions.LocalRayletDiedError(),
    ray.exceptions.RpcError("failed to connect to all addresses"),
    ray.exceptions.ActorDiedError(),
    ray.exceptions.ActorUnavailableError("the actor is unreachable", None),
    ConnectionError("Failed during this or a previous request"),  # Ray Client
    ClusterLostError("lost"),
]
NOT_LOST = [
    task_error(ValueError("a bug in a worker")),
    task_error(ConnectionError("a worker's own connection")),
    ray.train.WorkerGroupError("rank 0 failed", {0: ValueError("a bug")}),
    NonFiniteLossError("loss is nan at step 3", 3),
    FirstStepError("rank 0 failed before the first training step"),
    ValueError("bad value"),
]


def connection(endpoint: tuple[str, int]) -> ray_cluster._Connection:
    address = f"{endpoint[0]}:{endpoint[1]}"
    return ray_cluster._Connection(address, endpoint, address)


@pytest.mark.parametrize("error", LOST, ids=lambda e: type(e).__name__)
def test_a_connection_error_while_the_cluster_does_not_answer_is_a_lost_cluster(error, monkeypatch):
    monkeypatch.setattr(ray_cluster, "_connection", connection(closed_endpoint()))
    assert connection_lost(error)


@pytest.mark.parametrize("error", NOT_LOST, ids=lambda e: type(e).__name__)
def test_a_worker_or_training_failure_is_never_a_lost_cluster(error, monkeypatch):
    monkeypatch.setattr(ray_cluster, "_connection", connection(closed_endpoint()))
    assert not connection_lost(error)


def test_a_connection_error_is_no_lost_cluster_while_it_answers_or_without_an_address(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(ray_cluster, "_connection", connection(server.getsockname()))
        assert not any(connection_lost(error) for error in LOST[:-1])
    monkeypatch.setattr(ray_cluster, "_connection", None)  # a job on its own local Ray
    assert not any(connection_lost(error) for error in LOST[:-1])


def test_a_lost_cluster_becomes_one_error_with_the_traceback_at_debug(monkeypatch, caplog):
    monkeypatch.setattr(ray_cluster, "_connection", connection(closed_endpoint()))
    monkeypatch.setattr(ray_cluster, "_lost_reported", threading.Event())
    at_exit = []
    monkeypatch.setattr(ray_cluster.atexit, "register", at_exit.append)  # the job's process would end at exit
    address = ray_cluster._connection.address

    @ends_on_lost_cluster
    def job() -> None:
        raise ray.exceptions.RaySystemError("Failed to connect to GCS")

    caplog.set_level("DEBUG", logger="dctdiff")
    with pytest.raises(ClusterLostError) as lost:
        job()
    assert str(lost.value).startswith(f"lost the connection to the Ray cluster at {address}: ")
    assert f"`ray status --address {address}`" in str(lost.value) and "--resume" in str(lost.value)
    assert lost.value.__cause__ is None and lost.value.__suppress_context__
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.levelname == "DEBUG" and "Failed to connect to GCS" in caplog.text
    assert at_exit == [ray_cluster._end_process] and ray_cluster._lost_reported.is_set()

    @ends_on_lost_cluster
    def failing() -> None:
        raise task_error(ValueError("a bug in a worker"))

    with pytest.raises(ray.exceptions.RayTaskError) as raised:  # as it came
        failing()
    assert isinstance(raised.value, ValueError)


# --- the jobs, against a `ray start` head that is killed while they run ----------------------------------


@dataclass(frozen=True)
class Head:
    """A Ray head started with `ray start` in its own temp dir (all its processes mention it)."""

    address: str
    temp_dir: str


@pytest.fixture
def ray_head():
    """`ray start --head` on loopback, stopped (its processes only) afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port, dashboard = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", **local_ray_environment(dashboard)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    head = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
            "--temp-dir", temp_dir, "--include-dashboard", "true", "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        yield Head(f"127.0.0.1:{port}", temp_dir)
    finally:
        kill_processes_mentioning(temp_dir)
        time.sleep(1)
        shutil.rmtree(temp_dir, ignore_errors=True)


def lose_the_cluster_while(head: Head, argv: list[str], started: str, log: Path) -> tuple[int, str, float]:
    """Run `dctdiff ARGV --address HEAD`; once its stderr shows ``started``, kill the head's processes.
    Returns the job's exit status, its stderr and the seconds from the kill to its exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token",
           "RAY_gcs_rpc_server_reconnect_timeout_s": str(RAY_RECONNECT_S)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as err:
        job = subprocess.Popen([sys.executable, "-m", "dctdiff", *argv, "--address", head.address],
                               env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while started not in log.read_text(errors="replace"):
            if job.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the job did not start (exit {job.poll()}):\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        time.sleep(3)  # into the work
        kill_processes_mentioning(head.temp_dir)
        killed = time.monotonic()
        status = job.wait(timeout=RAY_RECONNECT_S + 60)
        return status, log.read_text(errors="replace"), time.monotonic() - killed
    finally:
        job.kill()


def assert_one_lost_line(status: int, err: str, seconds: float, address: str) -> None:
    """Exit 1 before Ray's own exit; the stderr ends with the one error line, naming the address; no traceback."""
    lines = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip()]  # a progress bar ends with \r
    assert status == 1 and "Traceback" not in err, err[-4000:]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err[-4000:]
    assert lines[-1].startswith(f"error: lost the connection to the Ray cluster at {address}: "), lines[-1]
    assert f"`ray status --address {address}`" in lines[-1]
    assert seconds < RAY_RECONNECT_S, f"{seconds:.1f} s"


@pytest.mark.slow
def test_sample_ends_with_one_line_when_its_cluster_is_lost(ray_head, tmp_path):
    from dctdiff.models.builders import build_codec, build_model
    from dctdiff.models.config import build_config

    config = build_config("demo", overrides=["model.embed_dim=128", "model.num_heads=2", "data.eta=242.0"])
    torch.save(build_model(config, build_codec(config, 242.0)).state_dict(), tmp_path / "nnet_ema.pth")
    argv = ["sample", "--checkpoint", str(tmp_path / "nnet_ema.pth"), "--preset", "demo", "--set", "data.eta=242.0",
            "--set", "model.embed_dim=128", "--set", "model.num_heads=2", "--num", "5000", "--batch-size", "4",
            "--nfe", "50", "--workers", "1", "--gpus-per-worker", "0", "--output", str(tmp_path / "out")]  # fmt: skip
    status, err, seconds = lose_the_cluster_while(ray_head, argv, "sampling actor(s)", tmp_path / "sample.log")
    assert_one_lost_line(status, err, seconds, ray_head.address)


@pytest.mark.slow
@pytest.mark.heavy
def test_train_ends_with_one_line_when_its_cluster_is_lost(ray_head, tmp_path):
    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    argv = ["train", "--data", str(data), *TINY, "--storage", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--name", "lost"]  # fmt: skip
    status, err, seconds = lose_the_cluster_while(ray_head, argv, TRAINING, tmp_path / "train.log")
    assert_one_lost_line(status, err, seconds, ray_head.address)


@pytest.mark.slow
@pytest.mark.heavy
def test_sweep_ends_with_one_line_when_its_cluster_is_lost(ray_head, tmp_path):
    from tests.test_sweep import write_space

    data = write_prepared(tmp_path / "data", photo_crops(16, 32, seed=0))
    space = write_space(tmp_path / "space.yaml", "space:\n  diffusion.snr_scale: {grid: [1]}\n")
    argv = ["sweep", "--study", space, "--data", str(data), *TINY, "--report-every", "1000", "--fid-samples", "8",
            "--nfe", "3", "--storage", str(tmp_path / "sweeps"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--name", "lost"]  # fmt: skip
    status, err, seconds = lose_the_cluster_while(ray_head, argv, TRAINING, tmp_path / "sweep.log")
    assert_one_lost_line(status, err, seconds, ray_head.address)
