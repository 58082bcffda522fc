"""What a training run leaves in MLflow, read back through the MLflow client: source tags, system
metrics, the dataset input, the resolved config, step-indexed sample grids and a loadable model."""

from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from dctdiff.core.generation import generate_images
from dctdiff.infra.mlflow_runs import RunHandle
from dctdiff.models.builders import build_codec, build_model, build_noise_schedule, checkpoint_codec, load_ema_model
from dctdiff.models.checkpoints import verify_checkpoint
from dctdiff.models.config import build_config
from dctdiff.training.run_logger import RankZeroLogger
from dctdiff.training.trainer import Trainer

ENTROPY = {"Y": [1.0, 0.8, 0.6, 0.4], "Cb": [1.0, 0.5, 0.5, 0.2], "Cr": [1.0, 0.5, 0.5, 0.2]}


def tiny_trainer() -> Trainer:
    config = build_config("demo", overrides=["model.embed_dim=32", "cadence.sample_nfe=3"])
    codec = build_codec(config, eta=242.0)
    torch.manual_seed(0)
    return Trainer(config, codec, build_model(config, codec), ENTROPY, torch.device("cpu"))


def new_run(tmp_path: Path) -> RunHandle:
    from dctdiff.infra.mlflow_runs import create_run

    return create_run(f"sqlite:///{tmp_path}/mlflow.db", "test", "run", {})


def test_final_model_loads_from_code_generates_and_registers(tmp_path):
    import mlflow

    trainer, run = tiny_trainer(), new_run(tmp_path)
    resolved = trainer.config.resolved(242.0, "ycbcr420").to_dict()  # as a run's workers hold it (LoopSettings.config)
    RankZeroLogger(run, 0).final_model(trainer, {"config": resolved, "eta": 242.0, "colour": "ycbcr420"})
    model = mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model")
    images = model.predict({"seed": [3, 1]}, params={"nfe": 3})
    expected = generate_images(trainer.ema, trainer.codec, build_noise_schedule(trainer.config), [3, 1],
                               trainer.config.cadence.sampler, 3).numpy()  # fmt: skip
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(images, expected)
    # no pickles: the model directory holds the code file and a checkpoint folder (safetensors, JSON state)
    (output,) = MlflowClient(run.tracking_uri).get_run(run.run_id).outputs.model_outputs
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{output.model_id}", dst_path=str(tmp_path / "dl")))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))
    assert {p.name for p in local.rglob("*")} >= {
        "mlflow_model.py",
        "ema.safetensors",
        "state.json",
        "manifest.json",
        "MLmodel",
    }
    config = json.loads(next(local.rglob("state.json")).read_text())
    assert config["eta"] == 242.0 and config["config"]["model"]["depth"] == 4
    # the checkpoint is one of the one writer's: it verifies, and load_ema_model samples the model's images
    checkpoint = next(local.rglob("manifest.json")).parent
    verify_checkpoint(str(checkpoint))
    ema, config, state = load_ema_model(str(checkpoint))
    from_checkpoint = generate_images(ema, checkpoint_codec(config, state), build_noise_schedule(config), [3, 1],
                                      config.cadence.sampler, 3).numpy()  # fmt: skip
    np.testing.assert_array_equal(images, from_checkpoint)
    version = mlflow.register_model(f"runs:/{run.run_id}/model", "dctdiff-test")
    assert (
        int(version.version) == 1
        and MlflowClient(run.tracking_uri).get_model_version("dctdiff-test", "1").run_id == run.run_id
    )


def image_steps(files: list[str]) -> list[int]:
    """Steps of MLflow's step-indexed ``samples`` images (images/samples+step+N+timestamp+...png)."""
    return sorted(
        int(name.split("+step+")[1].split("+")[0])
        for name in files
        if name.startswith("images/samples+step+") and name.endswith(".png")
    )


def test_sample_grids_are_step_indexed_viewable_images(tmp_path):
    trainer, run = tiny_trainer(), new_run(tmp_path)
    trainer.config.cadence.sample_count = 4
    logger = RankZeroLogger(run, 0)
    logger.sample_grid(trainer, 3)
    logger.sample_grid(trainer, 6)
    client = MlflowClient(run.tracking_uri)
    files = [a.path for a in client.list_artifacts(run.run_id, "images")]
    assert image_steps(files) == [3, 6], files
    png = next(name for name in files if name.endswith(".png"))
    from PIL import Image

    width = Image.open(client.download_artifacts(run.run_id, png, str(tmp_path))).size[0]
    assert width >= 256


def shard_digest(data: Path) -> str:
    files = sorted((p.name, p.stat().st_size) for p in (data / "coefficients").glob("*.parquet"))
    stats = hashlib.sha256(
        json.dumps(json.loads((data / "stats.json").read_text()), sort_keys=True).encode()
    ).hexdigest()
    return hashlib.sha256(("\n".join(f"{n}\t{s}" for n, s in files) + "\n" + stats).encode()).hexdigest()[:16]


@pytest.mark.slow
def test_training_run_is_complete_in_mlflow(small_runs, tmp_path):
    """The `dctdiff train` run of tests/small_runs.py (6 steps, grids at 3 and 6), read back from its store."""
    import mlflow

    data, uri = Path(small_runs.path("data-path")), small_runs.mlflow_uri
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.run_name = 'straight'"
    )
    tags, params = run.data.tags, run.data.params
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["mlflow.source.name"] == "dctdiff train" and tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.user"] == getpass.getuser()
    # system metrics from MLflow's monitor
    assert any(k.startswith("system/cpu_utilization_percentage") for k in run.data.metrics), sorted(run.data.metrics)
    assert any(k.startswith("system/system_memory_usage_megabytes") for k in run.data.metrics)
    # the data as a training dataset input
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == shard_digest(data)
    assert json.loads(dataset_input.dataset.source)["uri"].endswith(str(data))
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    # resolved config: no nulls; architecture, parameter count and the precision used
    stats_eta = json.loads((data / "stats.json").read_text())["eta"]
    assert float(params["data.eta"]) == pytest.approx(stats_eta)
    assert (params["model.embed_dim"], params["model.depth"], params["model.num_heads"]) == ("32", "4", "2")
    assert params["data.patch_size"] == "2" and params["optim.precision_used"] == "fp32"
    assert "None" not in params.values(), [k for k, v in params.items() if v == "None"]
    config_yaml = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "null" not in config_yaml
    # step-indexed sample grids
    assert image_steps([a.path for a in client.list_artifacts(run.info.run_id, "images")]) == [3, 6]
    # the final EMA model loads and generates the checkpoint's EMA images
    checkpoint = max(p for p in (small_runs.runs / "straight").glob("checkpoint_*") if p.is_dir())  # the newest: step 6
    ema, config, _ = load_ema_model(str(checkpoint))
    assert int(params["model.parameters"]) == sum(p.numel() for p in ema.parameters())
    mlflow.set_tracking_uri(uri)  # as a user loading the model from this store does
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    codec = build_codec(config, stats_eta)
    expected = generate_images(ema, codec, build_noise_schedule(config), [0, 5], config.cadence.sampler, 3).numpy()
    np.testing.assert_array_equal(model.predict({"seed": [0, 5]}, params={"nfe": 3}), expected)


def test_review_hint_opens_the_runs_view_of_the_runs_experiment(tmp_path):
    from dctdiff.infra.mlflow_tracking import review_hint, ui_command

    run = new_run(tmp_path)
    experiment_id = MlflowClient(run.tracking_uri).get_experiment_by_name("test").experiment_id
    hint = review_hint(run.tracking_uri, run.run_id)
    assert ui_command(run.tracking_uri) in hint
    assert hint.endswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning")
