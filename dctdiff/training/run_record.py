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
from dctdiff.infra.mlflow_runs import RunHandle
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


def log_dataset_input(run: RunHandle, data_uri: str, info: DatasetInfo) -> None:
    """The prepare output as the run's ``training`` dataset input (name, digest, redacted location, rows)."""
    location = redact(storage.normalize(data_uri))
    scheme = urlsplit(location).scheme
    run.log_dataset(
        name=location.rstrip("/").rpartition("/")[2] or location,
        digest=dataset_digest(info),
        source_type=scheme if scheme and scheme != "file" else "local",
        source=json.dumps({"uri": location}),
        profile=json.dumps({"rows": info.rows, "resolution": info.resolution, "block_size": info.block_size}),
        context="training",
    )


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
def system_metrics(run: RunHandle | None) -> Iterator[None]:
    """The machine's ``system/*`` metrics in ``run`` while inside (nothing without a run)."""
    if run is None:
        yield
        return
    with run.system_metrics(SYSTEM_METRICS_INTERVAL_S):
        yield
