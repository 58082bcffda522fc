"""FID between image sets, and the reconstruction analysis that picks how many frequencies to keep,
as Ray Data jobs (one FID Inception per actor, a GPU each when present) logged to MLflow.

    dctdiff evaluate fid SAMPLES REFERENCE [--save-stats REF.npz] [--run-id RUN]
    dctdiff evaluate fid REFERENCE --save-stats REF.npz
    dctdiff evaluate reconstruction SOURCE --block-size 4 [--resolution 128] [--gamma 0.5]

An image set is a folder of images, a `dctdiff prepare` output (decoded with all frequencies), an
.npz of uint8 images [N, H, W, 3], FID statistics (.npz with mu and sigma, the pytorch-fid format, so
published reference statistics work), a prepare source read directly (train split; those whose class in
``dctdiff.data.sources.SOURCES`` accepts the evaluate job) or photos:N (crops of the bundled photos; needs
--resolution).
``fid A B`` is the FID of A against reference B; ``--save-stats`` writes B's statistics (A's when B is
left out) for later runs. Results go to MLflow: a new run in ``--experiment``, or the run ``--run-id``
(e.g. the training run) without changing its status.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from dctdiff.core.codec import DCTCodec
from dctdiff.core.precision import Precision
from dctdiff.evaluation.feature_job import dataset_moments, feature_precision, image_set_features, related_metrics
from dctdiff.evaluation.feature_metrics import MIN_IMAGES
from dctdiff.evaluation.fid import FIDStats, check_same_precision, fid_from_stats, save_fid_stats
from dctdiff.evaluation.image_sets import ImageSet, ImageSetError, open_image_set
from dctdiff.evaluation.reconstruction import (
    DEFAULT_GAMMA,
    ReconstructionRow,
    choose_keep,
    csv_table,
    plot,
    reconstruction_batch,
    summarize,
)
from dctdiff.infra import storage
from dctdiff.infra.mlflow_runs import RunHandle, create_run, find_run
from dctdiff.infra.mlflow_tracking import TrackingOptions, redact, resolve_tracking_uri
from dctdiff.infra.ray_cluster import init_ray

DEFAULT_EXPERIMENT = "dctdiff-evaluate"
RECONSTRUCTION_BATCH = 16  # source images per reconstruction task (each becomes B*B + 1 images)

logger = logging.getLogger(__name__)


EVALUATE_TRACKING = TrackingOptions(experiment=DEFAULT_EXPERIMENT)  # the default store, a new run in dctdiff-evaluate


def log_to_mlflow(
    tracking: TrackingOptions,
    run_name: str,
    metrics: Sequence[tuple[str, float, int]],
    tags: dict[str, str],
    artifacts: Mapping[str, bytes] | None = None,
    artifact_dir: str | None = None,
) -> str:
    """Log (key, value, step) metrics, tags and ``artifacts`` (file name -> content, the files a job wrote
    through storage) under ``artifact_dir``; returns the run id.

    An existing run (``tracking.run_id``) keeps its status; a new run is created and ended here.
    Non-finite values (e.g. PSNR of an exact reconstruction) are left out: MLflow stores finite floats.
    """
    uri = resolve_tracking_uri(tracking.uri)
    if tracking.run_id:
        run = find_run(uri, tracking.run_id)
        if run is None:
            raise ValueError(f"--run-id {tracking.run_id} is not a run in the MLflow store {redact(uri)}")
    else:
        run = create_run(uri, tracking.experiment, run_name, {}, job="evaluate")
    run.log_metrics([(key, value, step) for key, value, step in metrics if np.isfinite(value)], tags)
    for name, data in (artifacts or {}).items():
        run.log_bytes(data, f"{artifact_dir}/{name}" if artifact_dir else name)
    if not tracking.run_id:
        run.end()
    return run.run_id


def run_fid(
    specs: Sequence[str],
    save_stats_to: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    limit: int | None = None,
    resolution: int | None = None,
    tracking: TrackingOptions | None = EVALUATE_TRACKING,
    metric: str = "fid",
    step: int = 0,
    precision: Precision = "fp32",
    allow_mixed_precision: bool = False,
) -> float | None:
    """FID of ``specs[0]`` against ``specs[1]`` (None with one set: then its statistics are only saved).

    Inception runs in fp32 by default, as published statistics; saved statistics record their precision,
    image count and source, and two sets of different precision are refused (``check_same_precision``)
    unless ``allow_mixed_precision``. When both are image sets, KID, its standard error and improved
    precision/recall are computed from the same features and logged beside FID (``related_metric``);
    statistics files hold moments only.
    """
    if not 1 <= len(specs) <= 2:
        raise ValueError(f"fid takes one or two image sets, got {len(specs)}")
    if len(specs) == 1 and not save_stats_to:
        raise ValueError("with one image set, fid only computes its statistics: add --save-stats OUT.npz")
    opened = [open_image_set(spec, resolution=resolution, limit=limit, progress=True) for spec in specs]
    to_compute = [s for s in opened if isinstance(s, ImageSet)]
    if to_compute:
        init_ray()
    with_features = len(to_compute) == 2 and min(s.count for s in to_compute) >= MIN_IMAGES
    groups = (
        image_set_features(to_compute, weights, batch_size, actors, with_features, precision=precision)
        if to_compute
        else []
    )
    resolved = feature_precision(precision) if to_compute else None
    computed = iter([group.moments.stats() for group in groups])
    stats = [
        s if isinstance(s, FIDStats) else next(computed)._replace(precision=resolved, images=s.count, source=spec)
        for s, spec in zip(opened, specs)
    ]
    if save_stats_to:
        save_fid_stats(save_stats_to, stats[-1])
        logger.info("statistics of %s written to %s", specs[-1], save_stats_to)
    if len(specs) == 1:
        return None
    check_same_precision(stats[0], stats[1], allow_mixed_precision)
    fid = fid_from_stats(stats[0], stats[1])
    logger.info("FID %.4f  (%s vs %s)", fid, _describe(opened[0], specs[0]), _describe(opened[1], specs[1]))
    related = related_metrics(groups[0].features(), groups[1].features()) if with_features else {}
    if related:
        logger.info(
            "KID %.5f +- %.5f, precision %.4f, recall %.4f",
            related["kid"],
            related["kid_std_error"],
            related["precision"],
            related["recall"],
        )
    else:
        logger.info(
            "no KID, precision, recall: they need two image sets of at least %d images each (a statistics "
            "file holds moments only)",
            MIN_IMAGES,
        )
    if tracking is not None:
        tags = {f"{metric}.set": specs[0], f"{metric}.reference": specs[1]}
        for name, side in zip(("set", "reference"), stats):
            tags[f"{metric}.precision.{name}"] = side.precision or "fp32 (not recorded)"
        for name, opened_set in zip(("set", "reference"), opened):
            if isinstance(opened_set, ImageSet):
                tags[f"{metric}.images.{name}"] = str(opened_set.count)
        logged = [(metric, fid, step)] + [(related_metric(metric, name), v, step) for name, v in related.items()]
        run_id = log_to_mlflow(tracking, "fid", logged, tags)
        logger.info("logged %s to MLflow run %s", metric, run_id)
    return fid


def related_metric(metric: str, name: str) -> str:
    """MLflow name of the metric ``name`` (kid, precision...) logged beside the FID metric ``metric``."""
    return name if metric == "fid" else f"{metric}_{name}"


def _describe(opened: ImageSet | FIDStats, spec: str) -> str:
    return opened.describe() if isinstance(opened, ImageSet) else f"{spec} (statistics)"


def reconstruction_metrics(rows: Sequence[ReconstructionRow]) -> list[tuple[str, float, int]]:
    """``rfid_keep_K`` and ``psnr_keep_K`` per kept-frequency count, at step 0 (keep is not a step)."""
    return [
        (f"{name}_keep_{row.keep}", value, 0)
        for row in rows
        for name, value in (("rfid", row.rfid), ("psnr", row.psnr))
    ]


def log_reconstruction_table(tracking: TrackingOptions, run_id: str, rows: Sequence[ReconstructionRow]) -> None:
    """The rows as the MLflow table ``reconstruction/table.json`` (keep, rFID, PSNR)."""
    table = {"keep": [r.keep for r in rows], "rfid": [r.rfid for r in rows], "psnr": [r.psnr for r in rows]}
    RunHandle(resolve_tracking_uri(tracking.uri), run_id).log_table(table, "reconstruction/table.json")


def run_reconstruction(
    source: str,
    block_size: int,
    resolution: int | None = None,
    gamma: float = DEFAULT_GAMMA,
    output: str = "outputs/reconstruction",
    weights: str | None = None,
    batch_size: int | None = None,
    actors: int | None = None,
    limit: int | None = None,
    tracking: TrackingOptions | None = EVALUATE_TRACKING,
    precision: Precision = "fp32",
) -> tuple[list[ReconstructionRow], int | None]:
    """rFID and PSNR for keep = 1..B*B on ``source``; the smallest keep with rFID < gamma.

    Writes ``output`` (a path or URI)/reconstruction.csv and reconstruction.png; returns (rows, chosen keep
    or None).
    """
    if gamma <= 0:
        raise ValueError(f"--gamma must be > 0, got {gamma}")
    image_set = open_image_set(source, resolution=resolution, limit=limit, progress=True)
    if not isinstance(image_set, ImageSet):
        raise ImageSetError(f"{source} holds FID statistics; the reconstruction analysis needs images")
    if image_set.count < 2:
        raise ImageSetError(f"{image_set.describe()}: rFID needs at least 2 images")
    DCTCodec(image_set.size, block_size, keep=1)  # validates the block size against the image size
    init_ray()
    ds = image_set.to_dataset().map_batches(
        reconstruction_batch,
        fn_kwargs={"block_size": block_size},
        batch_size=RECONSTRUCTION_BATCH,
        batch_format="numpy",
    )
    groups = dataset_moments(
        ds,
        total=image_set.count * (block_size**2 + 1),
        group="keep",
        mean_columns=("mse",),
        weights=weights,
        batch_size=batch_size,
        actors=actors,
        precision=precision,
    )
    rows = summarize({k: g.moments for k, g in groups.items()}, {k: g.mean("mse") for k, g in groups.items()})
    chosen = choose_keep(rows, gamma)
    title = f"{image_set.describe()}, B = {block_size}"
    files = {"reconstruction.csv": csv_table(rows), "reconstruction.png": plot(rows, gamma, chosen, title)}
    uris = storage.write_files(output, files)
    table = "\n".join(
        [f"{'keep':>4} {'rFID':>10} {'PSNR dB':>8}"] + [f"{r.keep:>4} {r.rfid:>10.3f} {r.psnr:>8.2f}" for r in rows]
    )
    logger.info("reconstruction of %s\n%s", title, table)
    logger.info("chosen keep (smallest with rFID < %s): %s", gamma, chosen if chosen is not None else "none")
    logger.info("wrote %s and %s", *uris)
    if tracking is not None:
        metrics = reconstruction_metrics(rows)
        if chosen is not None:
            metrics.append(("chosen_keep", chosen, 0))
        tags = {
            "reconstruction.source": source,
            "reconstruction.block_size": str(block_size),
            "reconstruction.gamma": str(gamma),
            "reconstruction.images": str(image_set.count),
        }
        run_id = log_to_mlflow(tracking, "reconstruction", metrics, tags, files, "reconstruction")
        log_reconstruction_table(tracking, run_id, rows)
        logger.info("logged to MLflow run %s", run_id)
    return rows, chosen
