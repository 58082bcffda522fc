"""Write a small prepare output (shards + stats.json) straight from images, without Ray, for the
training/sampling tests; pipelines/prepare.py has its own tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dctdiff.core.codec import DCTCodec
from dctdiff.data.prepare_job import stored_pixels
from dctdiff.data.shards import COEFFICIENT_DIR, CodecParams, write_shard
from dctdiff.data.statistics import coefficient_histogram, compute_stats, write_stats


def write_prepared(
    folder: Path,
    images: np.ndarray,
    block_size: int = 2,
    labels=None,
    shards: int = 2,
    colour: str = "ycbcr420",
    store_pixels: bool = False,
    inf_row: int | None = None,
) -> Path:
    """images uint8 [N, R, R, 3] -> folder/coefficients/part-*.parquet (with ``store_pixels`` also the pixels
    column, as prepare stores it) + folder/stats.json.

    ``inf_row``: that row's first coefficient is written as inf (after the statistics are computed).
    """
    resolution = images.shape[1]
    params = CodecParams(resolution=resolution, block_size=block_size, colour=colour, pixels=store_pixels)
    codec = DCTCodec(resolution, block_size, block_size**2, dtype=__import__("torch").float64, colour=colour)
    coefficients = codec.analyze(images).numpy()
    pixels = stored_pixels(params, list(images))
    labels = np.zeros(len(images), np.int32) - 1 if labels is None else np.asarray(labels, np.int32)
    ids = [f"img-{i:05d}" for i in range(len(images))]
    histogram = coefficient_histogram(coefficients, params.token_layout)
    if inf_row is not None:
        coefficients[inf_row, 0, 0, 0] = np.inf
    (folder / COEFFICIENT_DIR).mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(len(images)), shards)):
        write_shard(
            str(folder / COEFFICIENT_DIR / f"part-{k:05d}.parquet"),
            [ids[i] for i in part], labels[part], coefficients[part], params,
            None if pixels is None else pixels[part],
        )  # fmt: skip
    counts = {"read": len(images), "written": len(images), "rejected": 0}
    write_stats(str(folder / "stats.json"), compute_stats(histogram, params.token_layout, counts, params.to_dict()))
    return folder
