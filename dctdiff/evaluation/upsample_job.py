"""DCT upsampling (DCTdiff paper; dctdiff/core/dct_upsampling.py) of a folder of images as a Ray Data job, and a
comparison with bicubic and Lanczos.

    dctdiff upsample IN_FOLDER OUT_FOLDER [--factor 2|4] [--block-size 8]
    dctdiff upsample HELD_OUT REPORT_FOLDER --compare [--block-size 8] [--limit 200]

The first form writes every image of IN_FOLDER (recursively; any size divisible by the block size)
upsampled to OUT_FOLDER as PNG under the same relative path. ``--compare`` downsamples the held-out
images (any image set: folder, prepare output, .npz, photos:N with --resolution) by 2 (Pillow bicubic,
antialiased), upsamples them back with DCT, bicubic and Lanczos, and reports PSNR, SSIM and FID against
the originals: a table on stdout, compare.csv and a side-by-side compare.png in REPORT_FOLDER.
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from dctdiff.core.dct_upsampling import SUPPORTED_FACTORS, dct_upsample, pil_resize
from dctdiff.core.image_metrics import psnr, ssim
from dctdiff.core.token_layout import check_token_resolution
from dctdiff.evaluation.feature_job import image_set_stats
from dctdiff.evaluation.fid import fid_from_stats
from dctdiff.evaluation.image_grid import figure_png, save_png
from dctdiff.evaluation.image_sets import (
    ArrayImages,
    ImageSet,
    ImageSetError,
    image_sizes,
    read_image,
    relative_image_paths,
)
from dctdiff.infra import storage
from dctdiff.infra.logs import rate, show_progress
from dctdiff.infra.ray_cluster import init_ray

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 8  # measured best of 2, 4, 8 on the bundled photos (README)
COMPARE_METHODS = ("dct", "bicubic", "lanczos")
DOWNSAMPLE_METHOD = "bicubic"
PREVIEW_IMAGES = 4


def upsample_files(
    batch: dict[str, np.ndarray], source: str, output: str, block_size: int, factor: int
) -> dict[str, np.ndarray]:
    """Ray Data step: {relative path [b]} -> each image upsampled and written as PNG; {relative, height, width}."""
    heights, widths = [], []
    for relative in map(str, batch["relative"]):
        up = dct_upsample(read_image(storage.join(source, relative))[None], block_size, factor)[0]
        save_png(up, storage.join(output, posixpath.splitext(relative)[0] + ".png"))
        heights.append(up.shape[0])
        widths.append(up.shape[1])
    return {"relative": batch["relative"], "height": np.array(heights), "width": np.array(widths)}


def upsample_folder(source: str, output: str, block_size: int = DEFAULT_BLOCK_SIZE, factor: int = 2) -> int:
    """The Ray Data job: upsample every image under ``source`` into ``output``; returns the image count."""
    if factor not in SUPPORTED_FACTORS:
        raise ValueError(f"--factor must be one of {SUPPORTED_FACTORS}, got {factor}")
    if storage.normalize(source) == storage.normalize(output):
        raise ValueError("the output folder must differ from the input folder")
    relatives = relative_image_paths(source)
    if not relatives:
        raise ImageSetError(f"{source} holds no image files")
    for relative, (height, width) in zip(relatives, image_sizes([storage.join(source, r) for r in relatives], True)):
        if height % block_size or width % block_size:
            raise ImageSetError(
                f"{storage.join(source, relative)} is {height}x{width}, not divisible by --block-size {block_size} "
                "(crop it, or pick a block size that divides both sides)"
            )
    init_ray()
    import ray.data

    start = time.perf_counter()
    written = ray.data.from_items([{"relative": r} for r in relatives]).map_batches(
        upsample_files,
        fn_kwargs={"source": source, "output": output, "block_size": block_size, "factor": factor},
        batch_size=8,
        batch_format="numpy",
    )
    count = 0
    with tqdm(total=len(relatives), desc=f"DCT upsampling x{factor}", unit="img", disable=not show_progress()) as bar:
        for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
            count += len(batch["relative"])
            bar.update(len(batch["relative"]))
    seconds = time.perf_counter() - start
    logger.info(
        "upsampled %d images x%d (B = %d) into %s in %.1f s (%s)",
        count,
        factor,
        block_size,
        output,
        seconds,
        rate(count, seconds),
    )
    return count


@dataclass(frozen=True)
class CompareRow:
    """One upsampling method against the originals (PSNR, SSIM: means over images)."""

    method: str
    psnr: float
    ssim: float
    fid: float


def upsampled(low: np.ndarray, size: tuple[int, int], method: str, block_size: int) -> np.ndarray:
    """``low`` [N, h, w, 3] upsampled x2 to ``size`` with ``method`` ('dct' or a Pillow filter)."""
    return dct_upsample(low, block_size, 2) if method == "dct" else pil_resize(low, size, method)


def compare(
    image_set: ImageSet,
    output: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    weights: str | None = None,
    batch_size: int = 50,
    actors: int | None = None,
) -> list[CompareRow]:
    """Downsample x2, upsample back with each method, score against the originals; write compare.csv and
    compare.png to ``output`` (a path or URI)."""
    height, width = image_set.size
    try:
        check_token_resolution(height, width, block_size)  # the halved images are upsampled in B x B blocks
    except ValueError as error:
        raise ImageSetError(f"{image_set.describe()}: --compare: {error}") from None
    originals = image_set.load()
    low = pil_resize(originals, (height // 2, width // 2), DOWNSAMPLE_METHOD)
    results = {method: upsampled(low, (height, width), method, block_size) for method in COMPARE_METHODS}
    init_ray()
    sets = [ArrayImages("originals", originals)] + [ArrayImages(m, images) for m, images in results.items()]
    reference, *stats = image_set_stats(sets, weights, batch_size, actors)
    rows = [
        CompareRow(
            method,
            float(np.mean(psnr(originals, images))),
            float(np.mean(ssim(originals, images))),
            fid_from_stats(method_stats, reference),
        )
        for (method, images), method_stats in zip(results.items(), stats)
    ]
    table_csv = io.StringIO()
    writer = csv.DictWriter(table_csv, fieldnames=["method", "psnr", "ssim", "fid"])
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    files = {"compare.csv": table_csv.getvalue().encode(), "compare.png": preview(originals, low, results, block_size)}
    uris = storage.write_files(output, files)
    table = "\n".join(
        [f"{'method':<8} {'PSNR dB':>8} {'SSIM':>7} {'FID':>9}"]
        + [f"{r.method:<8} {r.psnr:>8.2f} {r.ssim:>7.4f} {r.fid:>9.3f}" for r in rows]
    )
    logger.info(
        "x2 upsampling of %s after x2 %s downsampling, DCT B = %d\n%s",
        image_set.describe(),
        DOWNSAMPLE_METHOD,
        block_size,
        table,
    )
    logger.info("wrote %s and %s", *uris)
    return rows


def preview(originals: np.ndarray, low: np.ndarray, results: dict[str, np.ndarray], block_size: int) -> bytes:
    """compare.png: side by side for the first images: original, the x2 downsampled input, each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("original", originals), ("input (1/2)", low)] + [
        (f"DCT (B={block_size})" if m == "dct" else m, images) for m, images in results.items()
    ]
    count = min(PREVIEW_IMAGES, len(originals))
    fig, axes = plt.subplots(count, len(columns), figsize=(2 * len(columns), 2 * count), dpi=100, squeeze=False)
    for row in range(count):
        for col, (title, images) in enumerate(columns):
            axes[row, col].imshow(images[row], interpolation="nearest")
            axes[row, col].axis("off")
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig)
