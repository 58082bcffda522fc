"""MLflow logging from the rank-0 Ray Train worker into the run that the driver opened."""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np

from dctdiff.core.generation import generate_images
from dctdiff.evaluation.image_grid import image_grid
from dctdiff.infra.mlflow_runs import ModelSpec, RunHandle
from dctdiff.models import image_sampler
from dctdiff.training.trainer import Trainer

MODEL_NAME = "model"  # the run's MLflow model: runs:/RUN_ID/model
GRID_KEY = "samples"  # the step-indexed MLflow image of the sample grids (the study report reads them back)
GRID_MIN_PX = 256  # sample grids are enlarged to at least this width, to be readable in the MLflow UI


class RankZeroLogger:
    """Logs metrics, sample grids and the final EMA model; does nothing on ranks other than 0."""

    def __init__(self, run: RunHandle | None, rank: int) -> None:
        self.run = run if rank == 0 else None

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """One batch of metrics at ``step`` (``band/x`` is logged as ``loss_x``)."""
        if self.run is None:
            return
        self.run.log_metrics([(k.replace("band/", "loss_"), v, step) for k, v in metrics.items() if k != "step"])

    def sample_grid(self, trainer: Trainer, step: int) -> None:
        """Decode EMA samples (fixed seeds, so grids are comparable across steps) and log the grid as the
        step-indexed image ``GRID_KEY``, enlarged to at least ``GRID_MIN_PX`` wide."""
        if self.run is None:
            return
        cadence = trainer.config.cadence
        images = generate_images(
            trainer.sampling_model, trainer.codec, trainer.noise_schedule, list(range(cadence.sample_count)),
            cadence.sampler, cadence.sample_nfe, device=trainer.device, precision=cadence.sample_precision,
        ).numpy()  # fmt: skip
        side = max(1, math.isqrt(len(images)))
        grid = image_grid([images[i : i + side] for i in range(0, len(images), side)])
        self.run.log_image(enlarge(grid, GRID_MIN_PX), key=GRID_KEY, step=step)

    def final_model(self, trainer: Trainer, extra: dict[str, Any]) -> None:
        """The run's MLflow model ``model``: a checkpoint folder written by ``Trainer.save`` (state.json with
        ``extra``, as the run's checkpoints), loaded by ``image_sampler.ImageSampler``."""
        if self.run is None:
            return
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(directory, extra)
            self.run.log_model(MODEL_NAME, directory, image_sampler.LOADER, model_spec(trainer), trainer.step)


def enlarge(image: np.ndarray, min_px: int) -> np.ndarray:
    """``image`` [H, W, 3] repeated by the smallest integer factor that makes it at least ``min_px`` wide."""
    factor = max(1, -(-min_px // image.shape[1]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def model_spec(trainer: Trainer) -> ModelSpec:
    """Input: seeds (and labels); params: nfe and sampler; output: uint8 images [n, H, W, 3]."""
    cadence, resolution = trainer.config.cadence, trainer.config.data.resolution
    return ModelSpec(
        columns=image_sampler.COLUMNS,
        params={"nfe": cadence.sample_nfe, "sampler": cadence.sampler},
        output_shape=(-1, resolution, resolution, 3),
        requirements=image_sampler.REQUIREMENTS,
    )
