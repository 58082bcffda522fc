"""MLflow plumbing shared by every job: where the tracking store is, the experiment, run status."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
DEFAULT_EXPERIMENT = "dctdiff"


@dataclass(frozen=True)
class TrackingOptions:
    """Where a job logs: the tracking URI (None: the default store) and the experiment of new runs."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the working directory.

    Relative SQLite paths are made absolute, so Ray workers (whose working directory differs) write
    to the same store as the driver.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:  # a bare path: a SQLite file
        uri = "sqlite:///" + str(Path(uri).resolve())
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go to an absolute ``mlartifacts/`` beside the database
    (MLflow's default is relative to each process's working directory); servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(tracking_uri: str, name: str) -> str:
    """Experiment id of ``name``, created once here in the driver (DESIGN.md §9: not in workers)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def ui_command(tracking_uri: str) -> str:
    """The command that opens this store in the MLflow UI, on loopback, lean (DESIGN.md §9)."""
    return (
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1 --host 127.0.0.1 "
        f"--backend-store-uri {tracking_uri}"
    )


def redact(text: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URIs (database URIs, s3://KEY:SECRET@...)."""
    return re.sub(r"(://[^/:@\s]*):[^@/\s]*@", r"\1:***@", text)


def create_run(
    tracking_uri: str, experiment: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any] | None = None
) -> str:
    """Create a RUNNING run named ``name`` in ``experiment`` with ``tags`` and ``params``; returns its id.

    Every job (train, sweep, evaluate) creates its runs here, and whoever calls this ends the run.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(tracking_uri, experiment)
    run_id = client.create_run(experiment_id, tags={"mlflow.runName": name, **tags}).info.run_id
    if params:
        log_params(tracking_uri, run_id, params)
    return run_id


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` (values as strings) in one batch."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
