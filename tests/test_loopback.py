"""A local training run listens on loopback only: Ray's processes and the DDP rendezvous store (issue #16)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dctdiff.infra.ray_cluster import (
    DASHBOARD_TIMEOUT_ENV,
    DASHBOARD_TIMEOUT_S,
    _is_loopback,
    environment,
    local_ray_environment,
    patient_dashboard_start,
    torch_config,
)

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def _address(hex_address: str) -> str:
    """/proc/net/tcp's ``0100007F`` or tcp6's 32 hex digits (32-bit words in host order) as an IP address."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words (x86, arm)
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def listening_sockets() -> dict[int, str]:
    """inode -> ``address:port`` of every listening TCP socket in this network namespace."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == LISTEN:
                address, port = local.split(":")
                host = _address(address)
                sockets[inode] = f"{f'[{host}]' if ':' in host else host}:{int(port, 16)}"
    return sockets


def process_tree(root: int) -> dict[int, str]:
    """pid -> name of ``root`` and all its descendants (Ray's gcs_server, raylet, workers, dashboard...)."""
    parents, names = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            parents[int(entry)], names[int(entry)] = int(rest[1]), name
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    return {pid: names.get(pid, "?") for pid in tree}


def listeners_of(root: int) -> set[tuple[str, str]]:
    """(process name, address:port) of each listening socket held by ``root``'s process tree."""
    sockets, found = listening_sockets(), set()
    for pid, name in process_tree(root).items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in sockets:
                found.add((name, sockets[int(target[8:-1])]))
    return found


def test_address_parsing_and_loopback():
    assert _address("0100007F") == "127.0.0.1"
    assert _address("00000000") == "0.0.0.0"
    assert _address("0000000000000000FFFF00000100007F") == "127.0.0.1"  # ::ffff:127.0.0.1
    assert _address("00000000000000000000000000000000") == "::"
    assert _is_loopback("127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.0.2.2") and not _is_loopback("node-1")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_a_local_ray_gets_its_dashboard_and_quiet_core_logs_and_later_processes_do_not(monkeypatch):
    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.1:8265")
    values = local_ray_environment(4321)
    assert values == {"RAY_BACKEND_LOG_LEVEL": "fatal", "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:4321"}
    with environment(values):
        assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:4321"
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ and os.environ["RAY_API_SERVER_ADDRESS"] == "http://10.0.0.1:8265"
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "info")  # a user's setting wins
    assert local_ray_environment(1)["RAY_BACKEND_LOG_LEVEL"] == "info"


SLOW_DASHBOARD = """
import sys, time
if sys.argv and sys.argv[0].endswith("dashboard.py"):
    time.sleep(6)
"""
START_LOCAL_RAY = """
import sys
import ray
from ray._private import ray_constants
from dctdiff.infra import ray_cluster

ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = 2  # Ray's 60 s, scaled down like the dashboard's delay
if sys.argv[1] == "ray-timeout":
    ray_cluster.patient_dashboard_start = lambda: None
try:
    ray_cluster.init_ray(num_cpus=1)
except ray_cluster.RayStartError as error:
    print(error)
    sys.exit(3)
print("started")
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_waits_for_a_slow_dashboard_that_ray_alone_gives_up_on(tmp_path):
    """CI's first local Ray failed: its dashboard had not started after Ray's 60 s (fresh 2-core machine).
    Here a dashboard needs 6 s against a 2 s timeout: Ray alone fails, init_ray waits."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_DASHBOARD)  # runs first in every Python Ray starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    env.pop(DASHBOARD_TIMEOUT_ENV, None)
    env.pop("RAY_ADDRESS", None)
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", START_LOCAL_RAY, mode], env=env, capture_output=True, text=True, timeout=300
        )
        for mode in ("ray-timeout", "patient")
    }
    assert runs["ray-timeout"].returncode == 3, runs["ray-timeout"].stdout + runs["ray-timeout"].stderr
    assert "could not start or reach a local Ray" in runs["ray-timeout"].stdout
    assert runs["patient"].returncode == 0 and "started" in runs["patient"].stdout, runs["patient"].stderr[-3000:]


def test_a_set_dashboard_timeout_wins(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "RAY_DASHBOARD_STARTUP_TIMEOUT_S", 45)
    monkeypatch.setenv(DASHBOARD_TIMEOUT_ENV, "45")
    patient_dashboard_start()
    assert ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S == 45
    monkeypatch.delenv(DASHBOARD_TIMEOUT_ENV)
    patient_dashboard_start()
    assert ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S == DASHBOARD_TIMEOUT_S


def test_local_training_run_listens_on_loopback_only(ray_session, tmp_path):
    """A 2-worker gloo run like the launcher's: while it trains, no socket of the run (this driver, Ray's
    processes, the workers and rank 0's rendezvous store) listens on a non-loopback address."""
    import ray.train
    from ray.train.torch import TorchTrainer

    marker = tmp_path / "trained"

    def loop(loop_config):
        import time

        import ray.train
        import torch
        import torch.distributed as dist

        tensor = torch.ones(1)
        dist.all_reduce(tensor)  # the process group (and its store) is up
        assert tensor.item() == 2
        if ray.train.get_context().get_world_rank() == 0:
            Path(loop_config["marker"]).touch()
        time.sleep(3)  # the driver looks meanwhile
        dist.barrier()

    seen: set[tuple[str, str]] = set()
    during: set[tuple[str, str]] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            found = listeners_of(os.getpid())
            seen.update(found)
            if marker.exists():
                during.update(found)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = TorchTrainer(
            loop,
            train_loop_config={"marker": str(marker)},
            torch_config=torch_config("gloo"),  # as pipelines/train.py builds it
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(name="loopback", storage_path=str(tmp_path / "runs")),
        ).fit()
    finally:
        done.set()
        watcher.join()
    assert result.error is None
    assert any(name.startswith("ray::RayTrainWo") for name, _ in during), f"saw no worker listening: {during}"
    exposed = sorted(
        (name, address) for name, address in seen if not _is_loopback(address.rsplit(":", 1)[0].strip("[]"))
    )
    assert not exposed, f"listening on a non-loopback address: {exposed}"


@pytest.mark.parametrize("ray_address, expected", [(None, "0"), ("ray://cluster:10001", None)])
def test_import_dctdiff_keeps_a_local_ray_on_loopback_but_not_a_cluster_job(ray_address, expected):
    """keep_ray_on_loopback, the one place that sets Ray's loopback variable, runs on `import dctdiff`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    probe = "import os, dctdiff; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'), os.environ['RAY_USAGE_STATS_ENABLED'])"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(expected), "0"]
