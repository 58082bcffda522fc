"""The MLflow model of a training run, defined from code (MLflow "models from code"): its one artifact is
``checkpoint``, a checkpoint folder of ``dctdiff.models.checkpoints`` (no pickles), and its model config
names the ``loader`` ("module:callable") that turns the folder into the object that predicts
(``RunHandle.log_model``; for training runs ``dctdiff.models.image_sampler:ImageSampler``).

    model = mlflow.pyfunc.load_model("runs:/RUN_ID/model")
    images = model.predict(pd.DataFrame({"seed": [0, 1, 2]}), params={"nfe": 20})  # uint8 [3, H, W, 3]

The loader is imported by name when MLflow loads the model, so this infra module depends on no layer above it.
"""

from __future__ import annotations

import importlib
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class CheckpointModel(PythonModel):
    """Delegates ``predict`` to ``loader(checkpoint folder)``."""

    def load_context(self, context: Any) -> None:
        """Import the loader named in the model config and build the predictor from the checkpoint artifact."""
        module, _, name = context.model_config["loader"].partition(":")
        self.predictor = getattr(importlib.import_module(module), name)(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        """The predictor's answer to ``model_input`` and ``params``."""
        return self.predictor.predict(model_input, params or {})


mlflow.models.set_model(CheckpointModel())
