"""Every MLflow run operation of dctdiff, behind one small API (docs/ARCHITECTURE.md, "Ray, MLflow and
storage facts"): open or resume a run, log params, metrics, tags, text, files, images, tables, a dataset
input and a model to it, end it, and read runs back for reports.

``RunHandle`` is plain data (tracking URI, run id), shipped to Ray workers; its methods talk to the store.
The only other module that imports MLflow is ``mlflow_tracking`` (the store: URIs, experiments, checks)
and ``mlflow_model`` (the model-from-code file that MLflow itself loads).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from dctdiff.infra.mlflow_tracking import get_or_create_experiment, source_tags

PARENT_TAG = "mlflow.parentRunId"  # MLflow's tag of a child run (a sweep's trials)
RUN_NAME_TAG = "mlflow.runName"
MODEL_CODE = "dctdiff.infra.mlflow_model"  # the model-from-code file of ``log_model``
# MLflow 3's advice when a pyfunc model is logged without an input example (its message starts with a
# terminal colour code). Its other advice, "Add type hints to the `predict` method", is raised under
# MLflow's own warnings.simplefilter("once") and cannot be filtered from here (README, "Troubleshooting").
INPUT_EXAMPLE_ADVICE = ".*An input example was not provided"


@functools.lru_cache(maxsize=None)
def _client(tracking_uri: str):
    """One MlflowClient per store and process."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@dataclass(frozen=True)
class ModelSpec:
    """The interface of a logged pyfunc model: input columns (name -> required, all int64), params with
    their defaults (int or str), the uint8 output's shape (-1 for any size) and the packages it needs."""

    columns: Mapping[str, bool]
    params: Mapping[str, int | str]
    output_shape: tuple[int, ...]
    requirements: Sequence[str]


@dataclass(frozen=True)
class RunHandle:
    """An open MLflow run: the tracking URI and the run id (plain data, shipped to the workers)."""

    tracking_uri: str
    run_id: str

    @property
    def _mlflow(self):
        return _client(self.tracking_uri)

    def status(self) -> str:
        """RUNNING, FINISHED, FAILED or KILLED."""
        return self._mlflow.get_run(self.run_id).info.status

    def experiment_id(self) -> str:
        """The id of the run's experiment."""
        return self._mlflow.get_run(self.run_id).info.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values as strings) in one batch."""
        from mlflow.entities import Param

        self._mlflow.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Iterable[tuple[str, float, int]], tags: Mapping[str, str] | None = None) -> None:
        """Log (key, value, step) metrics and ``tags`` in one batch, all with the time of now."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._mlflow.log_batch(
            self.run_id,
            metrics=[Metric(key, float(value), now, step) for key, value, step in metrics],
            tags=[RunTag(key, value) for key, value in (tags or {}).items()],
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) the run's ``tags``."""
        self.log_metrics([], tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file``."""
        self._mlflow.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """``data`` as the JSON (or YAML, by suffix) artifact ``artifact_file``."""
        self._mlflow.log_dict(self.run_id, dict(data), artifact_file)

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        """A local file (or folder) as an artifact under ``artifact_dir``."""
        self._mlflow.log_artifact(self.run_id, str(path), artifact_path=artifact_dir)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """``data`` as the artifact ``artifact_file`` (through a temporary local file)."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / name
            path.write_bytes(data)
            self.log_file(path, folder or None)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A uint8 image [H, W, 3] as the step-indexed image ``key``."""
        self._mlflow.log_image(self.run_id, image, key=key, step=step)

    def logged_image(self, key: str, step: int) -> np.ndarray | None:
        """The image that ``log_image(image, key, step)`` logged (uint8 [H, W, 3]; its last, if logged twice),
        read from MLflow's own artifact name images/<key>+step+<step>+timestamp+<ms>+<uuid>.png; None if
        there is none."""
        from PIL import Image

        prefix = f"images/{key.replace('/', '~')}+step+{step}+timestamp+"
        found = [
            a.path for a in self._mlflow.list_artifacts(self.run_id, "images")
            if a.path.startswith(prefix) and a.path.endswith(".png")
        ]  # fmt: skip
        if not found:
            return None
        newest = max(found, key=lambda path: int(path[len(prefix) :].split("+")[0]))
        with tempfile.TemporaryDirectory() as directory:
            with Image.open(self._mlflow.download_artifacts(self.run_id, newest, directory)) as picture:
                return np.asarray(picture.convert("RGB"))

    def log_table(self, table: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """Columns of equal length as the MLflow table ``artifact_file`` (.json)."""
        self._mlflow.log_table(self.run_id, data=dict(table), artifact_file=artifact_file)

    def log_dataset(self, name: str, digest: str, source_type: str, source: str, profile: str, context: str) -> None:
        """A dataset input of the run (``mlflow.data.context`` = ``context``, e.g. training)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type=source_type, source=source, profile=profile)
        tags = [InputTag("mlflow.data.context", context)]
        self._mlflow.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def log_model(self, name: str, checkpoint: str, loader: str, spec: ModelSpec, step: int) -> None:
        """A pyfunc model ``name`` from code (``mlflow_model``), no pickles: its one artifact is the local
        folder ``checkpoint``, and ``loader`` ("module:callable") turns that folder into the object whose
        ``predict(model_input, params)`` the model calls."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        model = self._mlflow.create_logged_model(self.experiment_id(), name, source_run_id=self.run_id)
        with warnings.catch_warnings():
            # MLflow asks for an input example to infer a signature: the signature is given
            warnings.filterwarnings("ignore", message=INPUT_EXAMPLE_ADVICE, category=UserWarning)
            mlflow.models.Model.log(
                name=name, artifact_path=None, flavor=mlflow.pyfunc, run_id=self.run_id, model_id=model.model_id,
                python_model=find_spec(MODEL_CODE).origin, artifacts={"checkpoint": str(checkpoint)},
                model_config={"loader": loader}, signature=_signature(spec),
                pip_requirements=[f"{package}=={version(package)}" for package in (*spec.requirements, "mlflow")],
                step=step,
            )  # fmt: skip

    def metric_history(self, key: str) -> list[Any]:
        """Every logged value of metric ``key`` (MLflow Metric: value, step, timestamp)."""
        return self._mlflow.get_metric_history(self.run_id, key)

    def child_runs(self, max_results: int) -> list[Any]:
        """The runs tagged as children of this one (MLflow Run: info, data.tags, data.params)."""
        return self._mlflow.search_runs(
            [self.experiment_id()], f"tags.`{PARENT_TAG}` = '{self.run_id}'", max_results=max_results
        )

    def reopen(self) -> str:
        """Set the run RUNNING again (a resumed job); returns its status before."""
        previous = self.status()
        self._mlflow.update_run(self.run_id, status="RUNNING")
        return previous

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self._mlflow.set_terminated(self.run_id, status=status)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float) -> Iterator[None]:
        """Log CPU, memory, disk, network (and GPU with nvidia-ml-py) as ``system/*`` metrics while inside."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=self.tracking_uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def _signature(spec: ModelSpec):
    """The MLflow signature of ``spec``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    columns = [ColSpec("long", name, required=required) for name, required in spec.columns.items()]
    params = [ParamSpec(k, "long" if isinstance(v, int) else "string", v) for k, v in spec.params.items()]
    output = Schema([TensorSpec(np.dtype(np.uint8), spec.output_shape)])
    return ModelSignature(inputs=Schema(columns), outputs=output, params=ParamSchema(params))


def create_run(
    tracking_uri: str,
    experiment: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    job: str = "train",
) -> RunHandle:
    """Create a RUNNING run named ``name`` in ``experiment`` with the source tags of ``dctdiff <job>``,
    ``tags`` and ``params``.

    Every job (train, sweep, evaluate) creates its runs here, and whoever calls this ends the run.
    """
    experiment_id = get_or_create_experiment(tracking_uri, experiment)
    run_tags = {RUN_NAME_TAG: name, **source_tags(job), **tags}
    run = RunHandle(tracking_uri, _client(tracking_uri).create_run(experiment_id, tags=run_tags).info.run_id)
    if params:
        run.log_params(params)
    return run


def find_run(tracking_uri: str, run_id: str) -> RunHandle | None:
    """The run ``run_id`` of the store, or None if it has none of that id."""
    from mlflow.exceptions import MlflowException

    try:
        return RunHandle(tracking_uri, _client(tracking_uri).get_run(run_id).info.run_id)
    except MlflowException:
        return None
