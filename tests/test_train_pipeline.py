"""pipelines/train.py on a real local Ray: MLflow contents, exact resume, worker loss, bad states."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dctdiff.commands.train_command import main, parse_args
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.infra.ray_cluster import ResourceError, plan_worker_cpus
from dctdiff.training.train_job import train
from tests.prepared import write_prepared

pytestmark = pytest.mark.slow

SMALL = [
    "--set", "optim.batch_size=8", "--set", "model.embed_dim=32", "--set", "optim.warmup_steps=2",
    "--set", "cadence.log_every=1", "--set", "cadence.checkpoint_every=2", "--set", "cadence.keep_checkpoints=2",
    "--set", "cadence.sample_every=4", "--set", "cadence.sample_count=4", "--set", "cadence.sample_nfe=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data"), photo_crops(32, 32, seed=0))


@pytest.fixture
def places(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return ["--storage", str(tmp_path / "runs"), "--mlflow-uri", uri], MlflowClient(uri), tmp_path / "runs"


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def run_id_of(client: MlflowClient, name: str) -> str:
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"attributes.run_name = '{name}'"
    )
    return run.info.run_id


def test_train_logs_to_mlflow_and_resumes_exactly_past_a_corrupt_newest_checkpoint(small_runs):
    """A straight 6-step run, and a 4-step run whose newest checkpoint (step 4) is then truncated: its
    --resume warns, goes back to the intact step-2 checkpoint (no retry, no failed worker) and repeats
    the straight run's losses exactly (tests/small_runs.py trains them)."""
    err = small_runs.resume_output
    assert f"{small_runs.truncated}: model.safetensors is truncated" in err
    assert f"newest intact checkpoint {small_runs.intact}" in err
    assert "WorkerGroupError" not in err and "SafetensorError" not in err  # not retried: no worker ever failed

    client = MlflowClient(small_runs.mlflow_uri)
    straight = run_id_of(client, "straight")
    run = client.get_run(straight)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["data.keep"] == "4"
    # 2 CPUs: one for the worker, one kept for Ray Data, which is idle once the small data is in memory
    assert run.data.params["worker_threads"] == "2"
    for key in ("loss", "loss_dc", "loss_ac", "loss_luma", "loss_chroma", "lr", "grad_norm", "images_per_s"):
        assert sorted(history(client, straight, key)) == [1, 2, 3, 4, 5, 6], key
    minutes = history(client, straight, "train_minutes")
    assert sorted(minutes) == [1, 2, 3, 4, 5, 6]
    assert 0 < minutes[1] and all(minutes[s] < minutes[s + 1] for s in range(1, 6))  # a clock of training only
    artifacts = {a.path for a in client.list_artifacts(straight)}
    assert {"config.yaml", "stats.json", "images"} <= artifacts  # images: the step-indexed sample grids
    # keep_checkpoints=2: steps 4 and 6 remain
    checkpoints = sorted(
        p for p in (small_runs.runs / "straight").iterdir() if p.is_dir() and p.name.startswith("checkpoint_")
    )
    assert len(checkpoints) == 2
    assert (checkpoints[-1] / "ema.safetensors").exists() and '"step": 6' in (
        checkpoints[-1] / "state.json"
    ).read_text()

    # the resumed run continues the same MLflow run: steps 1-4, then 3-6 again from the step-2 checkpoint
    split = run_id_of(client, "split")
    assert client.get_run(split).info.status == "FINISHED"
    expected = history(client, straight, "loss")
    logged = client.get_metric_history(split, "loss")
    assert sorted(m.step for m in logged) == [1, 2, 3, 3, 4, 4, 5, 6]
    np.testing.assert_allclose([m.value for m in logged], [expected[m.step] for m in logged], atol=1e-6)


@pytest.mark.heavy
def test_worker_killed_mid_run_restarts_from_checkpoint(ray_module, data, places):
    import ray
    from ray.util.state import list_actors

    where, client, runs = places
    request = parse_args(
        ["--data", str(data), *SMALL, *where, "--name", "killed", "--max-steps", "40",
         "--set", "cadence.checkpoint_every=10", "--set", "cadence.log_every=5", "--set", "cadence.sample_every=0"]
    )  # fmt: skip
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=train(request.config, request.options, request.tracking))
    )
    thread.start()
    deadline = time.time() + 240
    while (
        not any(p.is_dir() and p.name.startswith("checkpoint_") for p in (runs / "killed").glob("*"))
        and time.time() < deadline
    ):
        time.sleep(0.2)
    (worker,) = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    os.kill(worker.pid, signal.SIGKILL)
    thread.join(timeout=300)
    result, run_id = outcome["result"]
    assert result.error is None and result.metrics["step"] == 40
    assert '"step": 40' in (Path(result.checkpoint.path) / "state.json").read_text()
    # every step was trained and logged; the steps after the last checkpoint were logged twice
    assert sorted(set(history(client, run_id, "loss"))) == list(range(5, 41, 5))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(ray_module, data, places, capsys):
    where, client, runs = places
    args = ["--data", str(data), *SMALL, *where, "--name", "nan", "--max-steps", "5", "--max-failures", "0",
            "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=0", "--set", "cadence.checkpoint_every=1"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    # one line, from the driver (before the fix: a traceback, and the message once more from the worker)
    assert len(re.findall(r"loss is (nan|inf) at step 2", err)) == 1 and "Traceback" not in err, err
    assert re.search(r"^error: loss is (nan|inf) at step 2 .*the last good checkpoint is kept\)$", err, re.M), err
    assert client.get_run(run_id_of(client, "nan")).info.status == "FAILED"
    (checkpoint,) = [p for p in (runs / "nan").iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]
    assert '"step": 1' in (checkpoint / "state.json").read_text()


def test_inf_in_one_row_on_one_of_two_workers_stops_both_without_a_retry(ray_module, tmp_path, places, capsys):
    """Only the rank whose shard holds img-00005 sees the inf; both stop at the same step, with no retry."""
    import ray
    from ray.util.state import list_actors

    def train_workers() -> int:
        return len(
            list_actors(
                address=ray.get_runtime_context().gcs_address,
                filters=[("class_name", "=", "RayTrainWorker")],
                limit=10_000,
            )
        )

    data = write_prepared(tmp_path / "poisoned", photo_crops(32, 32, seed=0), inf_row=5)
    where, client, _ = places
    before, start = train_workers(), time.monotonic()
    assert main(["--data", str(data), *SMALL, *where, "--name", "inf", "--max-steps", "8", "--workers", "2",
                 "--set", "cadence.sample_every=0"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert re.search(r"^error: loss is (nan|inf) at step \d+ \(samples img-00005\)", err, re.M), err
    assert len(re.findall("loss is (nan|inf)", err)) == 1, err
    # prompt: no restart from the checkpoint (~60 s of a loaded 2-CPU machine's 240 s are Ray's start-up)
    assert time.monotonic() - start < 240
    assert train_workers() - before == 2  # one worker group of two workers: no retry
    assert client.get_run(run_id_of(client, "inf")).info.status == "FAILED"


def test_an_exception_before_the_first_step_is_recorded_and_not_retried(ray_module, data, tmp_path):
    """Every rank raises while building its trainer (entropies without the Y plane, so the EBFR weights
    fail): with max_failures=2 Ray Train used to start the group three times and meet the same error each
    time; now one worker group runs and the driver raises the recorded error once."""
    import dataclasses

    import ray
    from ray.util.state import list_actors

    from dctdiff.models.config import build_config
    from dctdiff.training.failure_record import FirstStepError
    from dctdiff.training.train_job import LaunchOptions, WorkerResources, launch, plan_run

    def train_workers() -> int:
        return len(
            list_actors(
                address=ray.get_runtime_context().gcs_address,
                filters=[("class_name", "=", "RayTrainWorker")],
                limit=10_000,
            )
        )

    config = build_config("demo", overrides=SMALL[1::2])
    options = LaunchOptions(str(data), WorkerResources(max_failures=2), str(tmp_path / "runs"), "first-step")
    plan = plan_run(config, options)
    plan = dataclasses.replace(plan, info=dataclasses.replace(plan.info, entropy={"Cb": [1.0] * 4, "Cr": [1.0] * 4}))
    before = train_workers()
    with pytest.raises(FirstStepError, match=r"^rank 0 failed before the first training step of this attempt "
                       r"completed, with ValueError: entropy needs planes .* missing \['Y'\].*not retried") as error:  # fmt: skip
        launch(plan, None)
    assert "\n" not in str(error.value)
    assert train_workers() - before == 1  # one attempt: before the fix, three (max_failures=2)


def test_bad_inputs_fail_fast_with_a_clear_message(ray_module, data, places, tmp_path, capsys):
    where, _, _ = places
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist: run `dctdiff prepare`"),
        (["--data", str(tmp_path)], "has no coefficients/\\*.parquet shards"),
        (["--data", str(data), "--set", "data.block_size=4", "--set", "data.keep=9"], "block size 2"),
        (["--data", str(data), *SMALL, "--workers", "2", "--cpus-per-worker", "1"], "the cluster has 2 CPUs"),
        (["--data", str(data), *SMALL, "--workers", "3"], "must be divisible by --workers 3"),
        (["--data", str(data), "--set", "optim.batch_size=64"], "fewer than one global batch"),
        (["--data", str(data), *SMALL, "--name", "nothing", "--resume"], "--resume: .* does not exist"),
    ]
    for extra, message in cases:
        assert main([*where, *extra]) == 2, extra
        assert re.search(message, capsys.readouterr().err), message


def test_plan_worker_cpus_keeps_a_cpu_for_ray_data():
    assert plan_worker_cpus(2, 2.0) == 0.5
    assert plan_worker_cpus(1, 16.0) == 1.0
    assert plan_worker_cpus(4, 16.0, cpus_per_worker=3) == 3
    with pytest.raises(ResourceError, match="GPUs; the cluster has 0"):
        plan_worker_cpus(1, 8.0, 0.0, gpus_per_worker=1)
    with pytest.raises(ResourceError, match="would wait forever"):
        plan_worker_cpus(1, 2.0, cpus_per_worker=2)


def test_dry_run_prints_the_resolved_config(capsys):
    from dctdiff.infra.mlflow_tracking import resolve_tracking_uri

    assert main(["--preset", "cifar10", "--dry-run", "--set", "optim.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0001" in out and "eta: 242.382" in out and "size: M" in out
    printed = yaml.safe_load(out)  # through print_dry_run, as every job's --dry-run
    assert printed["job"] == "train" and printed["launch"]["storage"] == "outputs/runs"
    assert printed["mlflow"] == {"uri": resolve_tracking_uri(None), "experiment": "dctdiff", "run_id": None}


def test_redact_hides_passwords():
    from dctdiff.infra.mlflow_tracking import redact

    assert redact("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("--backend-store-uri postgresql://u:p@h/db x") == "--backend-store-uri postgresql://u:***@h/db x"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
