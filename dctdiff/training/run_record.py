"""What the driver records in a training run's MLflow run beyond the config: the data as a dataset input,
the architecture's size, the precision used, and the machine's system metrics while it trains."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from dctdiff.infra import storage
from dctdiff.infra.mlflow_tracking import redact
from dctdiff.models.config import TrainConfig
from dctdiff.training.dataset_info import DatasetInfo

log = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL_S = 5.0  # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it


def dataset_digest(info: DatasetInfo) -> str:
    """Fingerprint of the training data: the shard files' names and sizes and the stats.json content."""
    files = sorted((e.relative, e.size) for e in storage.list_files(info.shards_uri) if e.relative.endswith(".parquet"))
    stats = hashlib.sha256(json.dumps(info.stats, sort_keys=True).encode()).hexdigest()
    text = "\n".join(f"{name}\t{size}" for name, size in files) + "\n" + stats
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_dataset_input(tracking_uri: str, run_id: str, data_uri: str, info: DatasetInfo) -> None:
    """The prepare output as the run's ``training`` dataset input (name, digest, redacted location, rows)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    location = redact(storage.normalize(data_uri))
    scheme = urlsplit(location).scheme
    dataset = Dataset(
        name=location.rstrip("/").rpartition("/")[2] or location,
        digest=dataset_digest(info),
        source_type=scheme if scheme and scheme != "file" else "local",
        source=json.dumps({"uri": location}),
        profile=json.dumps({"rows": info.rows, "resolution": info.resolution, "block_size": info.block_size}),
    )
    tags = [InputTag("mlflow.data.context", "training")]
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


def parameter_count(config: TrainConfig, eta: float) -> int:
    """Parameters of the network ``config`` builds, counted on the meta device (no memory, no time)."""
    import torch

    from dctdiff.models.builders import build_codec, build_model

    codec = build_codec(config, eta)
    with torch.device("meta"):
        model = build_model(config, codec)
    return sum(p.numel() for p in model.parameters())


def precision_used(config: TrainConfig, gpus_per_worker: float) -> str:
    """The precision the trainer runs in: the configured one on GPUs, fp32 on CPUs (no autocast there)."""
    return config.optim.precision if gpus_per_worker > 0 else "fp32"


def run_params(config: TrainConfig, info: DatasetInfo, gpus_per_worker: float) -> dict[str, Any]:
    """The run's MLflow params: the resolved config (no nulls), its size, precision and data."""
    resolved = config.resolved(info.eta, info.colour)
    return {
        **resolved.flat(),
        "model.parameters": parameter_count(resolved, info.eta),
        "optim.precision_used": precision_used(config, gpus_per_worker),
        "data.rows": info.rows,
    }


@contextlib.contextmanager
def system_metrics(tracking_uri: str | None, run_id: str | None) -> Iterator[None]:
    """Log CPU, memory, disk, network (and GPU with nvidia-ml-py) as ``system/*`` metrics while inside."""
    if run_id is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=True, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
