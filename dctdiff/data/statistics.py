"""Dataset statistics of DCT coefficients (docs/ARCHITECTURE.md, "Statistics"): eta and per-frequency entropies.

Every coefficient of a B x B block satisfies |c| <= 128 B (orthonormal DCT of a level-shifted block
whose pixels lie in [-128, 127]), so the histograms have a fixed range known in advance: each worker
counts its images on the same grid and the counts of any number of workers simply add up.
The grid cells are the float16 numbers in [-128 B, 128 B] (-0 and +0 apart): shards store float16 by
default, so their values are counted exactly, and everything below equals a direct NumPy computation
on the stored values. Other values are rounded to float16 first (relative error <= 2^-11).

From the merged histogram (one per plane present in the token layout, Y, Cb, Cr or Y alone for grey, and
per zigzag frequency):
- eta = max(|q(100 - tau)|, |q(tau)|) of the Y DC coefficient, tau = 98.25 (paper §4,
  entropy-consistent scaling); quantiles follow ``numpy.percentile``'s linear rule.
- entropy: Shannon entropy (bits) of the 100-bin histogram on [-1, 1] of coefficient / eta over the
  values strictly inside that frequency's [q(100 - tau), q(tau)] band.
- loss weights (EBFR, paper §4): each plane's kept entropies normalised to mean 1, laid out like a token.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from dctdiff.core.token_layout import TokenLayout
from dctdiff.infra import storage

TAU = 98.25
ENTROPY_BINS = 100
STATS_FORMAT = "dctdiff-stats"
STATS_VERSION = 1


def _largest_code(block_size: int) -> int:
    """float16 bit pattern (sign cleared) of the range bound 128 B."""
    return int(np.array(128.0 * block_size, np.float16).view(np.uint16))


def histogram_bins(block_size: int) -> int:
    """Number of cells: every float16 magnitude up to 128 B, once negative and once positive."""
    return 2 * (_largest_code(block_size) + 1)


def grid_values(block_size: int) -> np.ndarray:
    """The value of each cell, ascending: -128 B ... -0.0, +0.0 ... 128 B, float64 [histogram_bins]."""
    magnitudes = np.arange(_largest_code(block_size) + 1, dtype=np.uint16).view(np.float16).astype(np.float64)
    return np.concatenate([-magnitudes[::-1], magnitudes])


@lru_cache(maxsize=8)
def _cell_of_code(block_size: int) -> np.ndarray:
    """Lookup table: float16 bit pattern -> cell index (clipped to the range), int64 [65536]."""
    largest = _largest_code(block_size)
    codes = np.arange(2**16, dtype=np.int64)
    magnitude = np.minimum(codes & 0x7FFF, largest)
    return np.where(codes >> 15, largest - magnitude, largest + 1 + magnitude)


def cell_index(values: np.ndarray, block_size: int) -> np.ndarray:
    """Cell of each value (rounded to float16, clipped to the range): int64, same shape."""
    return _cell_of_code(block_size)[np.asarray(values).astype(np.float16, copy=False).view(np.uint16)]


def _block_size(layout: TokenLayout) -> int:
    """B of a layout that keeps every frequency (keep = B*B, as in the shards: CodecParams.token_layout)."""
    block_size = int(round(layout.keep**0.5))
    if block_size**2 != layout.keep:
        raise ValueError(f"the statistics need a layout with all B*B frequencies kept, got keep = {layout.keep}")
    return block_size


def empty_histogram(layout: TokenLayout) -> np.ndarray:
    """Zero counts int64 [planes of the layout, B*B frequencies, histogram_bins] (B*B = layout.keep)."""
    block_size = _block_size(layout)
    return np.zeros((len(layout.planes), layout.keep, histogram_bins(block_size)), dtype=np.int64)


def coefficient_histogram(coefficients: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Counts of coefficients [N, L, blocks, B*B] on the fixed grid -> int64 [planes, B*B, histogram_bins]."""
    block_plane = layout.block_plane_index()  # index into layout.planes of each block [blocks]
    frequencies, planes = layout.keep, len(layout.planes)
    block_size = _block_size(layout)
    bins = histogram_bins(block_size)
    if coefficients.ndim != 4 or coefficients.shape[2:] != (len(block_plane), frequencies):
        raise ValueError(
            f"coefficients must have shape [N, L, {len(block_plane)}, {frequencies}], got {list(coefficients.shape)}"
        )
    # One bincount over everything: cell + (plane of the block * B*B + frequency) * bins.
    offsets = (block_plane[:, None] * frequencies + np.arange(frequencies)) * bins  # [blocks, B*B]
    flat = (cell_index(coefficients, block_size) + offsets).ravel()
    counts = np.bincount(flat, minlength=planes * frequencies * bins)
    return counts.reshape(planes, frequencies, bins)


def histogram_quantiles(counts: np.ndarray, values: np.ndarray, q: list[float]) -> np.ndarray:
    """Percentiles ``q`` (0..100) of the multiset holding ``counts[k]`` copies of ``values[k]`` (sorted),
    with numpy.percentile's default linear interpolation between order statistics."""
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no values to take quantiles of")
    cumulative = np.cumsum(counts)
    position = (total - 1) * np.asarray(q, dtype=np.float64) / 100.0
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, total - 1)
    low = values[np.searchsorted(cumulative, below, side="right")]
    high = values[np.searchsorted(cumulative, above, side="right")]
    return low + (position - below) * (high - low)


# Coefficients closer to 0 than this (a thousandth of a grey level) are float rounding of an exact 0;
# they count as 0, so an entropy never depends on rounding noise or its sign (a 100-bin histogram on
# [-1, 1] has a bin edge at 0: noise of either sign would split one value over two bins, 1 bit).
ZERO_TOLERANCE = 1e-3


def band_entropy(counts: np.ndarray, values: np.ndarray, low: float, high: float, eta: float) -> float:
    """Entropy in bits of the 100-bin histogram on [-1, 1] of values / eta strictly inside (low, high);
    values within ZERO_TOLERANCE of 0 count as 0 (a frequency with no variance has entropy 0)."""
    values = np.where(np.abs(values) < ZERO_TOLERANCE, 0.0, values)
    low, high = (0.0 if abs(x) < ZERO_TOLERANCE else x for x in (low, high))
    inside = (values > low) & (values < high)
    coarse, _ = np.histogram(values[inside] / eta, bins=ENTROPY_BINS, range=(-1.0, 1.0), weights=counts[inside])
    total = coarse.sum()
    if total == 0:
        return 0.0
    p = coarse[coarse > 0] / total
    return float(-(p * np.log2(p)).sum())


def in_stats_sample(image_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether an image feeds the statistics under ``--stats-sample fraction``: a hash of (seed, id),
    so the choice is the same however the images are split among workers."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


@dataclass(frozen=True)
class DatasetStats:
    """What stats.json holds (docs/ARCHITECTURE.md, "Statistics"). Entropies and band edges are per plane, zigzag order."""

    eta: float
    entropy: dict[str, list[float]]
    band: dict[str, dict[str, list[float]]]
    counts: dict[str, Any]
    codec: dict[str, Any]
    tau: float = TAU
    stats_sample: float = 1.0
    histogram: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The stats.json document."""
        return {"format": STATS_FORMAT, "version": STATS_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "DatasetStats":
        """Parse a stats.json document; a file of another kind or version raises a clear error."""
        if document.get("format") != STATS_FORMAT or document.get("version") != STATS_VERSION:
            raise ValueError(
                f"not a {STATS_FORMAT} v{STATS_VERSION} file (format={document.get('format')!r}, "
                f"version={document.get('version')!r}): re-run `dctdiff prepare` to write it"
            )
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in document.items() if k in names})


def compute_stats(
    histogram: np.ndarray,
    layout: TokenLayout,
    counts: dict[str, Any],
    codec: dict[str, Any],
    tau: float = TAU,
    stats_sample: float = 1.0,
) -> DatasetStats:
    """eta, band edges and entropies of the layout's planes from merged histograms
    int64 [planes, B*B, histogram_bins(B)] (B*B = layout.keep)."""
    expected = empty_histogram(layout).shape
    if histogram.shape != expected:
        raise ValueError(
            f"histogram must have shape {list(expected)} for planes {list(layout.planes)} and {layout.keep} "
            f"frequencies, got {list(histogram.shape)}"
        )
    block_size = _block_size(layout)
    planes = layout.planes
    if histogram[0, 0].sum() == 0:
        raise ValueError("no coefficients were counted: no image made it into the statistics")
    values = grid_values(block_size)
    quantiles = [100.0 - tau, tau]
    band = {plane: {"low": [], "high": []} for plane in planes}
    for p, plane in enumerate(planes):
        for f in range(block_size**2):
            low, high = histogram_quantiles(histogram[p, f], values, quantiles)
            band[plane]["low"].append(float(low))
            band[plane]["high"].append(float(high))
    eta = max(abs(band["Y"]["low"][0]), abs(band["Y"]["high"][0]))  # Y DC, paper §4
    if eta <= 0:
        raise ValueError("eta came out 0: the Y DC band is a single point (are all images one flat grey?)")
    entropy = {
        plane: [
            band_entropy(histogram[p, f], values, band[plane]["low"][f], band[plane]["high"][f], eta)
            for f in range(block_size**2)
        ]
        for p, plane in enumerate(planes)
    }
    return DatasetStats(
        eta=float(eta),
        entropy=entropy,
        band=band,
        counts=dict(counts),
        codec=dict(codec),
        tau=tau,
        stats_sample=stats_sample,
        histogram={"cells": "float16 values", "bins": histogram_bins(block_size), "range": 128 * block_size},
    )


def write_stats(uri: str, stats: DatasetStats) -> None:
    """Write stats.json (atomically where local)."""
    storage.write_json(uri, stats.to_json())


def load_stats(uri: str) -> DatasetStats:
    """Read a stats.json file, or the one inside a prepare output folder."""
    if storage.is_dir(uri):
        uri = storage.join(uri, "stats.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"no statistics at {uri}: run `dctdiff prepare` for this dataset first")
    return DatasetStats.from_json(storage.read_json(uri))
