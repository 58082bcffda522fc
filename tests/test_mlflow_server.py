"""The team MLflow server of cluster/mlflow/: a real PostgreSQL and a real `mlflow server` (started by
cluster/mlflow/start.sh) on loopback, a training job and a one-trial sweep logging to it, and checks
through MLflow's REST API (plain HTTP), on the artifact store and in the database itself."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from safetensors.torch import load_file

from dctdiff.commands.sweep_command import main as sweep_main
from dctdiff.commands.train_command import main as train_main
from dctdiff.data.bundled_photos import photo_crops
from tests.prepared import write_prepared

REPO = Path(__file__).resolve().parents[1]
START = REPO / "cluster" / "mlflow" / "start.sh"
PARENT = "mlflow.parentRunId"  # MLflow's tag of a child run
PASSWORD = "pw-7c1e9a52d4"  # the test database's: must never appear in any output
TINY = ["--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2", "--set", "optim.lr=1e-3",
        "--set", "optim.batch_size=8", "--set", "cadence.log_every=1", "--set", "cadence.checkpoint_every=2",
        "--set", "cadence.sample_every=4", "--set", "cadence.sample_count=4",
        "--set", "cadence.sample_nfe=2"]  # fmt: skip


URI_SECRET = "s3cr/et@K7-uri"  # a password with "/" and "@", as cloud secret keys have
SECRETS = (URI_SECRET, quote(URI_SECRET, safe=""))  # as typed, and %-escaped as it stands in the URI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


def test_start_script_refuses_a_missing_or_non_postgresql_store(tmp_path):
    env = {"PATH": os.environ["PATH"], "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)}
    missing = subprocess.run([str(START)], env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "set MLFLOW_BACKEND_STORE_URI=postgresql://" in missing.stderr
    sqlite = {**env, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/m.db"}
    refused = subprocess.run([str(START)], env=sqlite, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "must be a postgresql:// URI" in refused.stderr


# --------------------------------------------------------------------------------------------------
# A throwaway PostgreSQL on loopback (as the postgres user when run as root, as CI does)
# --------------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    port: int
    folder: Path
    bin: Path
    as_user: list[str]

    def run(self, tool: str, *args: str, stdin: str | None = None) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], input=stdin, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{self.port}/mlflow"


@pytest.fixture(scope="module")
def postgres():
    binaries = postgres_bin()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs the Debian package postgresql")
        pytest.skip("needs PostgreSQL (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the unix socket path must stay < 108 chars
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    db = Postgres(free_port(), folder, binaries, as_user)
    try:
        db.run("initdb", "-D", f"{folder}/data", "-U", "postgres", "--auth-local=trust",
               "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")  # fmt: skip
        db.run("pg_ctl", "-D", f"{folder}/data", "-l", f"{folder}/log", "-w", "-o",
               f"-c listen_addresses=127.0.0.1 -p {db.port} -k {folder}", "start")  # fmt: skip
        sql = f"CREATE ROLE mlflow LOGIN PASSWORD '{PASSWORD}';\nCREATE DATABASE mlflow OWNER mlflow;\n"
        db.run("psql", "-h", str(folder), "-p", str(db.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q",
               stdin=sql)  # on stdin, not in the process list  # fmt: skip
        yield db
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            db.run("pg_ctl", "-D", f"{folder}/data", "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# mlflow server through cluster/mlflow/start.sh
# --------------------------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    artifacts: Path
    log: Path

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server not up after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def get(self, endpoint: str, **query) -> dict:
        """GET a REST endpoint of MLflow's API (plain HTTP, no MLflow client)."""
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}") as r:
            return json.load(r)

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as r:
            return json.load(r)

    def runs(self, experiment: str) -> list[dict]:
        """Every run of the experiment called ``experiment``."""
        experiment_id = self.get("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
        return self.post("runs/search", {"experiment_ids": [experiment_id]})["runs"]


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """Started here, waited for by the test (so Ray and the data get ready meanwhile); stopped after."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": postgres.uri,
        "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    env.pop("MLFLOW_HOST", None)  # the default under test: loopback
    log = folder / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen([str(START)], env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        yield Server(process, f"http://127.0.0.1:{port}", folder / "artifacts", log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data"), photo_crops(16, 32, seed=11))


def artifact_files(server: Server, run: dict) -> dict[str, Path]:
    """The run's files in the artifact destination (<experiment id>/<run id>/artifacts/PATH), by PATH."""
    folder = server.artifacts / run["info"]["experiment_id"] / run["info"]["run_id"] / "artifacts"
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_training_run_arrives_in_postgresql_and_the_artifact_store(postgres, mlflow_server, ray_session, data, tmp_path,
                                                                   capfd):  # fmt: skip
    import psycopg

    mlflow_server.wait_ready()
    port = int(mlflow_server.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
    assert listening_addresses(postgres.port) == {"127.0.0.1"}

    # The client reaches the server with credentials in the URI (basic auth): they must surface nowhere.
    secret_uri = mlflow_server.url.replace("http://", f"http://alice:{quote(URI_SECRET, safe='')}@")
    argv = ["--data", str(data), *TINY, "--max-steps", "4", "--storage", str(tmp_path / "runs"),
            "--mlflow-uri", secret_uri, "--name", "team-run", "--experiment", "team"]  # fmt: skip
    assert train_main(argv) == 0

    (run,) = mlflow_server.runs("team")
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "team-run"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["optim.lr"] == "0.001" and params["model.embed_dim"] == "32" and params["data.rows"] == "16"
    history = mlflow_server.get("metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    losses = {m["step"]: m["value"] for m in history}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) and v > 0 for v in losses.values())

    listed = {f["path"]: f for f in mlflow_server.get("artifacts/list", run_id=run_id)["files"]}
    assert {"config.yaml", "stats.json", "images"} <= set(listed)  # images: the step-indexed sample grids

    # The artifacts are in the destination folder (the "shared storage"): the run's files and its logged
    # model, whose weights equal the EMA weights of the final checkpoint.
    stored = artifact_files(mlflow_server, run)
    assert {"config.yaml", "stats.json"} <= set(stored) and any(p.startswith("images/") for p in stored)
    assert json.loads(stored["stats.json"].read_text()) == json.loads((data / "stats.json").read_text())
    (logged_weights,) = (mlflow_server.artifacts / run["info"]["experiment_id"]).rglob("models/*/**/ema.safetensors")
    final = max(p for p in (tmp_path / "runs" / "team-run").glob("checkpoint_*") if p.is_dir())  # step 4
    logged, saved = load_file(logged_weights), load_file(final / "ema.safetensors")
    assert logged.keys() == saved.keys() and all(torch.equal(logged[k], saved[k]) for k in saved)

    # No secret in any file the run wrote: artifacts, the logged model, checkpoints and run records.
    for folder in (mlflow_server.artifacts, tmp_path / "runs"):
        leaks = [p for p in folder.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in SECRETS)]
        assert leaks == []

    # ... and the run data are in PostgreSQL, where the REST API read them from.
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password=PASSWORD, dbname="mlflow") as db:
        rows = db.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run_id,)).fetchall()
        (lr,) = db.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'optim.lr'", (run_id,)).fetchone()
    assert dict(rows) == losses and lr == "0.001"

    # ... nor in any table of the store.
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password=PASSWORD, dbname="mlflow") as db:
        tables = [r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        dumped = " ".join(str(db.execute(f'SELECT string_agg(t::text, \' \') FROM "{name}" t').fetchone()[0])
                          for name in tables)  # fmt: skip
    assert "team-run" in dumped and not any(s in dumped for s in SECRETS)

    out, err = capfd.readouterr()
    for secret in (PASSWORD, *SECRETS):  # the store's password and the client's URI password
        assert secret not in out + err + mlflow_server.log.read_text()
    assert "mlflow:***@127.0.0.1" in mlflow_server.log.read_text()


@pytest.mark.slow
def test_sweep_logs_a_parent_and_its_trials_to_the_server(mlflow_server, ray_session, data, tmp_path, capfd):
    """A one-trial grid sweep (tune/sweep.py): the parent run with the result table, the trial as its child."""
    mlflow_server.wait_ready()
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  diffusion.snr_scale: {grid: [2]}\n")
    argv = ["--study", str(space), "--data", str(data), "--set", "optim.batch_size=8", "--set", "model.embed_dim=32",
            "--set", "optim.warmup_steps=2", "--max-steps", "2", "--report-every", "2", "--fid-samples", "4",
            "--nfe", "2", "--scheduler", "grid", "--storage", str(tmp_path / "sweeps"), "--name", "team-sweep",
            "--mlflow-uri", mlflow_server.url, "--experiment", "team-sweeps"]  # fmt: skip
    capfd.readouterr()
    assert sweep_main(argv) == 0
    out, err = capfd.readouterr()
    assert "Trial status" not in out + err  # Tune's status tables: one start and one end line per trial instead
    assert re.search(r"trial \w+ \(snr_scale=2\) ended at step 2: FID [\d.]+", err), err[-3000:]

    runs = mlflow_server.runs("team-sweeps")
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    (parent,) = [r for r, t in zip(runs, tags) if t.get("dctdiff.sweep") == "team-sweep" and PARENT not in t]
    (child,) = [r for r, t in zip(runs, tags) if t.get(PARENT) == parent["info"]["run_id"]]
    assert parent["info"]["status"] == child["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in child["data"]["params"]}["diffusion.snr_scale"] in ("2", "2.0")
    fid = mlflow_server.get("metrics/get-history", run_id=child["info"]["run_id"], metric_key="fid")["metrics"]
    assert [m["step"] for m in fid] == [2] and math.isfinite(fid[0]["value"]) and fid[0]["value"] > 0
    best = mlflow_server.get("metrics/get-history", run_id=parent["info"]["run_id"], metric_key="best_fid")["metrics"]
    assert [m["value"] for m in best] == [fid[0]["value"]]
    listed = {f["path"] for f in mlflow_server.get("artifacts/list", run_id=parent["info"]["run_id"])["files"]}
    assert {"results.csv", "best_config.yaml", "space.yaml"} <= listed
    # the table the server stores is the one written to the sweep's storage folder
    results = (tmp_path / "sweeps" / "team-sweep" / "results.csv").read_text()
    assert artifact_files(mlflow_server, parent)["results.csv"].read_text() == results
