"""MLflow logging from the rank-0 Ray Train worker into the run that the driver opened."""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from dctdiff.core.generation import generate_images
from dctdiff.evaluation.image_grid import image_grid
from dctdiff.training.trainer import Trainer

MODEL_NAME = "model"  # the run's MLflow model: runs:/RUN_ID/model
GRID_MIN_PX = 256  # sample grids are enlarged to at least this width, to be readable in the MLflow UI
# MLflow 3's advice when a pyfunc model is logged without an input example (its message starts with a
# terminal colour code). Its other advice, "Add type hints to the `predict` method", is raised under
# MLflow's own warnings.simplefilter("once") and cannot be filtered from here (README, "Troubleshooting").
INPUT_EXAMPLE_ADVICE = ".*An input example was not provided"


@dataclass(frozen=True)
class RunHandle:
    """An open MLflow run: the tracking URI and the run id (plain data, shipped to the workers)."""

    tracking_uri: str
    run_id: str


class RankZeroLogger:
    """Logs metrics, sample grids and the final EMA model; does nothing on ranks other than 0."""

    def __init__(self, run: RunHandle | None, rank: int) -> None:
        self.active = run is not None and rank == 0
        if self.active:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(run.tracking_uri)
            self.tracking_uri, self.run_id = run.tracking_uri, run.run_id

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """One batch of metrics at ``step`` (``band/x`` is logged as ``loss_x``)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k.replace("band/", "loss_"), float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=entries)

    def sample_grid(self, trainer: Trainer, step: int) -> None:
        """Decode EMA samples (fixed seeds, so grids are comparable across steps) and log the grid as the
        step-indexed image ``samples``, enlarged to at least ``GRID_MIN_PX`` wide."""
        if not self.active:
            return
        cadence = trainer.config.cadence
        images = generate_images(
            trainer.sampling_model, trainer.codec, trainer.noise_schedule, list(range(cadence.sample_count)),
            cadence.sampler, cadence.sample_nfe, device=trainer.device, precision=cadence.sample_precision,
        ).numpy()  # fmt: skip
        side = max(1, math.isqrt(len(images)))
        grid = image_grid([images[i : i + side] for i in range(0, len(images), side)])
        self.client.log_image(self.run_id, enlarge(grid, GRID_MIN_PX), key="samples", step=step)

    def final_model(self, trainer: Trainer, eta: float, colour: str) -> None:
        """The EMA network as the run's MLflow model ``model`` (models from code: safetensors + config.json
        with the config resolved for ``eta`` and the shards' ``colour``)."""
        if not self.active:
            return
        import mlflow
        from safetensors.torch import save_file

        mlflow.set_tracking_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory() as directory:
            weights, config = Path(directory) / "ema.safetensors", Path(directory) / "config.json"
            save_file({k: v.detach().cpu().contiguous() for k, v in trainer.ema.state_dict().items()}, str(weights))
            config.write_text(json.dumps({"config": trainer.config.resolved(eta, colour).to_dict(), "eta": eta}))
            experiment_id = self.client.get_run(self.run_id).info.experiment_id  # MLflow would use its default
            model = self.client.create_logged_model(experiment_id, MODEL_NAME, source_run_id=self.run_id)
            with warnings.catch_warnings():
                # MLflow asks for an input example to infer a signature: the signature is given
                warnings.filterwarnings("ignore", message=INPUT_EXAMPLE_ADVICE, category=UserWarning)
                mlflow.models.Model.log(
                    name=MODEL_NAME, artifact_path=None, flavor=mlflow.pyfunc, run_id=self.run_id,
                    model_id=model.model_id, python_model=find_spec("dctdiff.evaluation.mlflow_model").origin,
                    artifacts={"weights": str(weights), "config": str(config)},
                    signature=model_signature(trainer), pip_requirements=model_requirements(), step=trainer.step,
                )  # fmt: skip


def enlarge(image: np.ndarray, min_px: int) -> np.ndarray:
    """``image`` [H, W, 3] repeated by the smallest integer factor that makes it at least ``min_px`` wide."""
    factor = max(1, -(-min_px // image.shape[1]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def model_signature(trainer: Trainer):
    """Input: seeds (and labels); params: nfe and sampler; output: uint8 images [n, H, W, 3]."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    cadence, resolution = trainer.config.cadence, trainer.config.data.resolution
    columns = [ColSpec("long", "seed"), ColSpec("long", "label", required=False)]
    params = ParamSchema([ParamSpec("nfe", "long", cadence.sample_nfe), ParamSpec("sampler", "string", cadence.sampler)])
    output = Schema([TensorSpec(np.dtype(np.uint8), (-1, resolution, resolution, 3))])
    return ModelSignature(inputs=Schema(columns), outputs=output, params=params)


def model_requirements() -> list[str]:
    """What loading the model needs (pinned as installed); the ``dctdiff`` package itself comes on top."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "safetensors", "numpy", "einops", "mlflow")]
