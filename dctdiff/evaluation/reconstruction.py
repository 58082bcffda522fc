"""The paper's rule for how many frequencies to keep (DCTdiff §3, frequency truncation): for each keep in
1..B*B, reconstruct real images through the codec, decode(encode(x)), measure rFID against the
originals and PSNR, and take the smallest keep whose rFID is below gamma (default 0.5).

``reconstruction_batch`` is the per-batch step of the Ray job (`dctdiff evaluate reconstruction`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from dctdiff.core.codec import DCTCodec
from dctdiff.core.image_metrics import mse, psnr_from_mse
from dctdiff.evaluation.fid import FeatureMoments, fid_from_stats
from dctdiff.evaluation.image_grid import figure_png

DEFAULT_GAMMA = 0.5
ORIGINAL = 0  # the ``keep`` value that marks the original images in a reconstruction batch


@lru_cache(maxsize=64)
def _codec(resolution: tuple[int, int], block_size: int, keep: int) -> DCTCodec:
    return DCTCodec(resolution, block_size, keep)


def reconstructions(images: np.ndarray, block_size: int) -> dict[int, np.ndarray]:
    """decode(encode(images)) for every keep in 1..B*B: {keep: uint8 [N, H, W, 3]}.

    The coefficients are computed once (``analyze``) and truncated per keep, which equals ``encode``
    (``tokens_from_coefficients(analyze(x)) == encode(x)``); eta cancels out, so it is 1 here.
    """
    resolution = (images.shape[1], images.shape[2])
    coefficients = _codec(resolution, block_size, block_size**2).analyze(images)  # [N, L, 6, B*B]
    out = {}
    for keep in range(1, block_size**2 + 1):
        codec = _codec(resolution, block_size, keep)
        out[keep] = codec.decode(codec.tokens_from_coefficients(coefficients)).numpy()
    return out


def reconstruction_batch(batch: dict[str, np.ndarray], block_size: int) -> dict[str, np.ndarray]:
    """Ray Data step: {image [b, H, W, 3]} -> rows for keep = 0 (the originals) and every keep 1..B*B:
    {image [b (B*B + 1), H, W, 3], keep, mse (per image, against its original)}."""
    originals = np.array(batch["image"])  # a writable copy: Ray batches are read-only
    images, keeps, errors = [originals], [np.full(len(originals), ORIGINAL)], [np.zeros(len(originals))]
    for keep, rebuilt in reconstructions(originals, block_size).items():
        images.append(rebuilt)
        keeps.append(np.full(len(originals), keep))
        errors.append(mse(originals, rebuilt))
    return {"image": np.concatenate(images), "keep": np.concatenate(keeps), "mse": np.concatenate(errors)}


@dataclass(frozen=True)
class ReconstructionRow:
    """One keep: rFID against the originals, PSNR of the set's mean squared error."""

    keep: int
    rfid: float
    psnr: float


def summarize(moments: dict[int, FeatureMoments], mean_mse: dict[int, float]) -> list[ReconstructionRow]:
    """Rows for every keep from the feature moments (key ORIGINAL: the originals) and mean MSEs."""
    reference = moments[ORIGINAL].stats()
    return [
        ReconstructionRow(keep, fid_from_stats(moments[keep].stats(), reference), float(psnr_from_mse(mean_mse[keep])))
        for keep in sorted(k for k in moments if k != ORIGINAL)
    ]


def choose_keep(rows: Sequence[ReconstructionRow], gamma: float = DEFAULT_GAMMA) -> int | None:
    """The smallest keep with rFID < gamma (paper's rule), or None when no keep reaches it."""
    return min((row.keep for row in rows if row.rfid < gamma), default=None)


def csv_table(rows: Sequence[ReconstructionRow]) -> bytes:
    """reconstruction.csv: keep, rfid, psnr per line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["keep", "rfid", "psnr"])
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return buffer.getvalue().encode()


def plot(rows: Sequence[ReconstructionRow], gamma: float, chosen: int | None, title: str = "") -> bytes:
    """reconstruction.png: rFID (log scale, left) and PSNR (right) against keep, the gamma line and the
    chosen keep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keeps = [row.keep for row in rows]
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=120)
    left.plot(keeps, [max(row.rfid, 1e-3) for row in rows], "o-", color="tab:blue", label="rFID")
    left.axhline(gamma, color="tab:blue", linestyle=":", label=f"gamma = {gamma}")
    if chosen is not None:
        left.axvline(chosen, color="grey", linestyle="--", label=f"chosen keep = {chosen}")
    left.set_yscale("log")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("keep (frequencies per block)")
    left.set_ylabel("rFID", color="tab:blue")
    right = left.twinx()
    finite = [(row.keep, row.psnr) for row in rows if np.isfinite(row.psnr)]
    right.plot([k for k, _ in finite], [p for _, p in finite], "s-", color="tab:red", label="PSNR")
    right.set_ylabel("PSNR (dB)", color="tab:red")
    left.legend(loc="center right", fontsize=8)
    left.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig)
