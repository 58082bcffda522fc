"""MLflow logging from the rank-0 Ray Train worker into the run that the driver opened."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dctdiff.core.generation import generate_images
from dctdiff.evaluation.image_grid import image_grid
from dctdiff.training.trainer import Trainer


@dataclass(frozen=True)
class RunHandle:
    """An open MLflow run: the tracking URI and the run id (plain data, shipped to the workers)."""

    tracking_uri: str
    run_id: str


class RankZeroLogger:
    """Logs metrics, sample grids and the final EMA weights; does nothing on ranks other than 0."""

    def __init__(self, run: RunHandle | None, rank: int) -> None:
        self.active = run is not None and rank == 0
        if self.active:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(run.tracking_uri)
            self.run_id = run.run_id

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """One batch of metrics at ``step`` (``band/x`` is logged as ``loss_x``)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k.replace("band/", "loss_"), float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=entries)

    def sample_grid(self, trainer: Trainer, step: int) -> None:
        """Decode EMA samples (fixed seeds, so grids are comparable across steps) and log the PNG."""
        if not self.active:
            return
        cadence = trainer.config.cadence
        images = generate_images(
            trainer.ema, trainer.codec, trainer.noise_schedule, list(range(cadence.sample_count)), cadence.sampler,
            cadence.sample_nfe, device=trainer.device,
        ).numpy()  # fmt: skip
        side = max(1, math.isqrt(len(images)))
        rows = [images[i : i + side] for i in range(0, len(images), side)]
        self.client.log_image(self.run_id, image_grid(rows), artifact_file=f"samples/step_{step:07d}.png")

    def final_weights(self, trainer: Trainer) -> None:
        """The EMA weights as ``model/ema.safetensors``."""
        if not self.active:
            return
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "ema.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in trainer.ema.state_dict().items()}, str(path))
            self.client.log_artifact(self.run_id, str(path), artifact_path="model")
