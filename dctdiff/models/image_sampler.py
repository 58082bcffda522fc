"""Seeds (and optional class labels) -> uint8 images from a checkpoint's EMA network: what the MLflow model
of a training run predicts (``dctdiff.infra.mlflow_model`` loads it from the run's checkpoint folder)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dctdiff.core.generation import generate_images
from dctdiff.models.builders import load_ema_sampling

LOADER = f"{__name__}:ImageSampler"  # the model config's loader of a training run's MLflow model
COLUMNS = {"seed": True, "label": False}  # input columns (int64) -> required
REQUIREMENTS = ("torch", "safetensors", "numpy", "einops")  # what loading needs; dctdiff itself comes on top


class ImageSampler:
    """The EMA network, codec and noise schedule of one checkpoint folder, on the CPU."""

    def __init__(self, checkpoint: str) -> None:
        self.model, self.codec, self.schedule, self.config = load_ema_sampling(checkpoint, "cpu")

    def predict(self, model_input: Any, params: Mapping[str, Any]) -> np.ndarray:
        """``model_input``: a DataFrame or dict with ``seed`` (and optional ``label``); ``params``: ``nfe``,
        ``sampler`` (default: the run's sample-grid settings). Returns uint8 images [n, H, W, 3]."""
        cadence = self.config.cadence
        seeds = [int(s) for s in np.asarray(model_input["seed"]).reshape(-1)]
        labels = [int(x) for x in np.asarray(model_input["label"]).reshape(-1)] if "label" in model_input else None
        images = generate_images(
            self.model, self.codec, self.schedule, seeds, params.get("sampler") or cadence.sampler,
            int(params.get("nfe") or cadence.sample_nfe), labels=labels,
        )  # fmt: skip
        return images.numpy()
