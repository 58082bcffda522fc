"""`dctdiff evaluate spectrum`: radial power spectrum and block-DCT energy of samples against a
reference (``dctdiff.evaluation.spectrum``), written as CSV tables and a plot, logged to MLflow.

    dctdiff evaluate spectrum SAMPLES REFERENCE [--block-size 4] [--output DIR] [--run-id RUN]

In-process: the FFT and the block DCT are cheap next to Inception features, so no Ray job.
"""

from __future__ import annotations

import logging

from dctdiff.evaluation.evaluate_job import EVALUATE_TRACKING, log_to_mlflow
from dctdiff.evaluation.image_sets import ImageSet, ImageSetError, open_image_set
from dctdiff.evaluation.spectrum import csv_tables, plot, spectral_metrics, spectral_stats
from dctdiff.infra import storage
from dctdiff.infra.mlflow_tracking import TrackingOptions

DEFAULT_BLOCK_SIZE = 4
DEFAULT_OUTPUT = "outputs/spectrum"
BATCH = 64  # images per FFT / DCT batch

logger = logging.getLogger(__name__)


def _images(spec: str, resolution: int | None, limit: int | None) -> ImageSet:
    opened = open_image_set(spec, resolution=resolution, limit=limit, progress=True)
    if not isinstance(opened, ImageSet):
        raise ImageSetError(f"{spec} holds FID statistics; the spectral evaluation needs images")
    return opened


def run_spectrum(
    samples: str,
    reference: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    resolution: int | None = None,
    output: str = DEFAULT_OUTPUT,
    limit: int | None = None,
    tracking: TrackingOptions | None = EVALUATE_TRACKING,
) -> dict[str, float]:
    """Spectral metrics of ``samples`` against ``reference`` (images of one size); writes
    ``output`` (a path or URI)/spectrum.csv, dct_energy.csv and spectrum.png and logs them with the metrics."""
    sets = [_images(spec, resolution, limit) for spec in (samples, reference)]
    if sets[0].size != sets[1].size:
        raise ImageSetError(f"the spectra compare images of one size: {sets[0].describe()} vs {sets[1].describe()}")
    stats = [spectral_stats(s.iter_batches(BATCH), block_size) for s in sets]
    metrics = spectral_metrics(*stats)
    title = f"{sets[0].describe()} vs {sets[1].describe()}, B = {block_size}"
    files = {**csv_tables(stats[0], stats[1]), "spectrum.png": plot(stats[0], stats[1], title)}
    uris = storage.write_files(output, files)
    for name, value in metrics.items():
        logger.info("%-26s %.4f", name, value)
    logger.info("wrote %s, %s and %s", *uris)
    if tracking is not None:
        tags = {
            "spectrum.set": samples,
            "spectrum.reference": reference,
            "spectrum.block_size": str(block_size),
            "spectrum.images.set": str(sets[0].count),
            "spectrum.images.reference": str(sets[1].count),
        }
        run_id = log_to_mlflow(
            tracking, "spectrum", [(name, value, 0) for name, value in metrics.items()], tags, files, "spectrum"
        )
        logger.info("logged to MLflow run %s", run_id)
    return metrics
