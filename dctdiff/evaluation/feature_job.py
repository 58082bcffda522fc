"""Inception feature extraction as a Ray Data job: one FID network per actor (a GPU each when the
cluster has GPUs; an actor uses only the device Ray reserved for it), feature moments merged in the
driver, optionally per group (e.g. per ``keep``), and optionally the features themselves (for KID and
precision/recall: float32 [N, 2048], 8 KiB per image). The driver does no GPU work: the metrics that need
the features run as a Ray task on a GPU of the cluster (``related_metrics``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dctdiff.core.precision import Precision, resolved_precision
from dctdiff.evaluation.feature_metrics import feature_metrics
from dctdiff.evaluation.fid import FeatureMoments, FIDStats, default_batch_size, extract_features, load_inception
from dctdiff.evaluation.image_sets import ImageSet
from dctdiff.infra.logs import show_progress
from dctdiff.infra.ray_cluster import reserved_device


class InceptionActor:
    """Ray Data callable class: batch {image [b, H, W, 3] uint8, ...} -> {features [b, 2048], ...}.

    Columns other than ``image`` pass through (group keys, per-image metrics).
    """

    def __init__(self, weights: str | None, batch_size: int, actors_per_node: int, precision: Precision) -> None:
        device = reserved_device()
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // actors_per_node))
        self.model = load_inception(weights, device)
        self.batch_size = batch_size
        self.precision = precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {key: value for key, value in batch.items() if key != "image"}
        out["features"] = extract_features(batch["image"], self.model, self.batch_size, self.precision)
        return out


def default_actor_count() -> int:
    """One actor per GPU in the cluster, else one per node (each uses all of its node's cores)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus or max(1, len([n for n in ray.nodes() if n.get("Alive")]))


def feature_device() -> str:
    """Where the feature actors run: "cuda" on a cluster with GPUs (one each), else "cpu"."""
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def feature_precision(precision: Precision) -> str:
    """What the feature actors' ``precision`` runs as ("fp32" or "bf16"), as saved statistics record it."""
    return resolved_precision(feature_device(), precision)


def dataset_features(
    ds: Any, weights: str | None = None, batch_size: int | None = None, actors: int | None = None,
    precision: Precision = "fp32",
) -> Any:  # fmt: skip
    """The Ray dataset ``ds`` (column ``image``) with the ``image`` column replaced by ``features``, computed
    in ``precision`` (fp32 by default, as published statistics; ``dctdiff.core.precision``), ``batch_size``
    images per forward pass (None: 256 on GPUs, 50 on CPUs)."""
    import ray

    actors = actors or default_actor_count()
    use_gpu = feature_device() == "cuda"
    batch_size = batch_size or default_batch_size(feature_device())
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    return ds.map_batches(
        InceptionActor,
        fn_constructor_kwargs={
            "weights": weights,
            "batch_size": batch_size,
            "actors_per_node": -(-actors // nodes),
            "precision": precision,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
    )


@dataclass
class GroupFeatures:
    """Feature moments of one group of images, the sums of per-image scalar columns, and the feature
    batches when kept (``dataset_moments(keep_features=True)``)."""

    moments: FeatureMoments = field(default_factory=FeatureMoments.empty)
    sums: dict[str, float] = field(default_factory=dict)
    batches: list[np.ndarray] = field(default_factory=list)

    def features(self) -> np.ndarray:
        """The kept features of the group, float32 [n, 2048], in dataset order."""
        if not self.batches:
            raise ValueError("no features were kept: call dataset_moments(..., keep_features=True)")
        return np.concatenate(self.batches)

    def mean(self, column: str) -> float:
        """Mean of a per-image column over the group."""
        return self.sums[column] / self.moments.count


def dataset_moments(
    ds: Any,
    total: int | None = None,
    group: str | None = None,
    mean_columns: Sequence[str] = (),
    weights: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    progress: bool = True,
    keep_features: bool = False,
    keep_positions: np.ndarray | None = None,
    precision: Precision = "fp32",
) -> dict[Any, GroupFeatures]:
    """Inception feature moments of the images of ``ds`` per value of its column ``group`` (one group,
    key None, without it), and the sums of the per-image columns ``mean_columns``.

    Runs the feature job and merges batches in the driver as they stream in (memory: one [2048, 2048]
    float64 matrix per group, whatever the number of images). ``keep_features`` also keeps the features
    (8 KiB per image), in dataset order, so that subset-based metrics do not depend on scheduling;
    ``keep_positions`` (sorted, 0-based positions in dataset order within each group) keeps only those.
    """
    groups: dict[Any, GroupFeatures] = {}
    features = dataset_features(ds, weights, batch_size, actors, precision)
    if keep_features:
        features.context.execution_options.preserve_order = True
    with tqdm(total=total, desc="Inception features", unit="img", disable=not show_progress(progress)) as bar:
        for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
            keys = batch[group] if group else np.zeros(len(batch["features"]), dtype=np.int8)
            for key in np.unique(keys):
                rows = keys == key
                entry = groups.setdefault(key.item() if group else None, GroupFeatures())
                group_features = batch["features"][rows]  # [n, 2048]
                if keep_features:
                    kept = group_features
                    if keep_positions is not None:
                        positions = entry.moments.count + np.arange(len(kept))  # in dataset order
                        kept = kept[np.isin(positions, keep_positions)]
                    entry.batches.append(kept.astype(np.float32))
                entry.moments.update(group_features)
                for column in mean_columns:
                    entry.sums[column] = entry.sums.get(column, 0.0) + float(batch[column][rows].sum())
            bar.update(len(keys))
    return groups


def image_set_features(
    sets: Sequence[ImageSet],
    weights: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    keep_features: bool = False,
    keep_positions: np.ndarray | None = None,
    precision: Precision = "fp32",
) -> list[GroupFeatures]:
    """Feature moments (and the features, with ``keep_features``: all, or those at ``keep_positions`` of
    each set) of several image sets in one Ray Data job (the sets tagged by a ``set`` column)."""
    datasets = [
        s.to_dataset().add_column("set", lambda batch, i=i: np.full(len(batch["image"]), i), batch_format="numpy")
        for i, s in enumerate(sets)
    ]
    union = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    groups = dataset_moments(
        union,
        total=sum(s.count for s in sets),
        group="set",
        weights=weights,
        batch_size=batch_size,
        actors=actors,
        keep_features=keep_features,
        keep_positions=keep_positions,
        precision=precision,
    )
    return [groups[i] for i in range(len(sets))]


def image_set_stats(
    sets: Sequence[ImageSet], weights: str | None = None, batch_size: int | None = None, actors: int | None = None
) -> list[FIDStats]:
    """FID statistics of several image sets in one Ray Data job."""
    return [group.moments.stats() for group in image_set_features(sets, weights, batch_size, actors)]


def _related_metrics_task(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return feature_metrics(samples, reference, device=reserved_device())


def related_metrics(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``feature_metrics`` of sample features [m, 2048] against reference features [n, 2048], computed in a
    Ray task: on a GPU of the cluster when it has GPUs (precision/recall is O((m + n)^2 d)), else on a CPU."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if feature_device() == "cuda" else 0)(_related_metrics_task)
    return ray.get(task.remote(samples, reference))
