"""The MLflow model of a training run, defined from code (MLflow "models from code"): its artifacts are
the EMA weights (``weights``: safetensors) and ``config`` (config.json: the resolved config and eta), so
neither code nor weights are pickled.

    model = mlflow.pyfunc.load_model("runs:/RUN_ID/model")
    images = model.predict(pd.DataFrame({"seed": [0, 1, 2]}), params={"nfe": 20})  # uint8 [3, H, W, 3]
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

class ImageSampler(PythonModel):
    """Seeds (and optional class labels) -> uint8 images [n, H, W, 3] from the run's EMA network."""

    def load_context(self, context: Any) -> None:
        """Build the codec, network and noise schedule from ``config`` and load ``weights``."""
        from safetensors.torch import load_file

        from dctdiff.models.config import config_from_dict
        from dctdiff.models.builders import build_codec, build_model, build_noise_schedule

        with open(context.artifacts["config"]) as file:
            record = json.load(file)
        self.config = config_from_dict(record["config"])
        self.codec = build_codec(self.config, record["eta"])
        self.model = build_model(self.config, self.codec)
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()
        self.schedule = build_noise_schedule(self.config)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        """``model_input``: a DataFrame or dict with ``seed`` (and optional ``label``); ``params``: ``nfe``,
        ``sampler`` (default: the run's sample-grid settings)."""
        from dctdiff.core.generation import generate_images

        params = params or {}
        cadence = self.config.cadence
        seeds = [int(s) for s in np.asarray(model_input["seed"]).reshape(-1)]
        labels = [int(x) for x in np.asarray(model_input["label"]).reshape(-1)] if "label" in model_input else None
        images = generate_images(
            self.model, self.codec, self.schedule, seeds, params.get("sampler") or cadence.sampler,
            int(params.get("nfe") or cadence.sample_nfe), labels=labels,
        )  # fmt: skip
        return images.numpy()


mlflow.models.set_model(ImageSampler())
