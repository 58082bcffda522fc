"""Spectral view of samples against a reference: the radially averaged power spectrum of the luma and
the per-frequency block-DCT energy.

Diffusion denoises coarse-to-fine, generating low frequencies first (Dieleman 2024, "Diffusion is
spectral autoregression"; DCTdiff, Ning et al. 2025, §5): a model that has not yet learned the high
frequencies shows it here, which FID summarises away.

- Radial spectrum: per image, P(f) = |FFT2(Y - mean Y)|^2 / (H W) of the luma Y = 0.299 R + 0.587 G +
  0.114 B, averaged over the annulus of integer radius r = round(max(H, W) |f|) (f in cycles per pixel),
  r = 1..min(H, W) // 2, then over images.
- DCT energy: mean squared coefficient per plane (Y, Cb, Cr) and zigzag frequency of
  ``DCTCodec.analyze`` (4:2:0, B x B blocks, level shift 128), over images, tokens and the 4 Y blocks.
- Comparison: spectral distance = mean over bins of |ln(samples / reference)|, and energy ratios
  (samples / reference) of the low, middle and high third of the bins.

Both are sums over images, streamed in batches in-process: cheap next to Inception features.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from dctdiff.core.codec import RGB_TO_YCBCR, DCTCodec, zigzag_order
from dctdiff.core.token_layout import YCBCR_420_BLOCKS
from dctdiff.evaluation.image_grid import figure_png

PLANES = ("Y", "Cb", "Cr")
BANDS = ("low", "mid", "high")


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> JPEG luma [N, H, W] float64."""
    return np.asarray(images, dtype=np.float64) @ RGB_TO_YCBCR[0]


def radial_bins(height: int, width: int) -> np.ndarray:
    """Integer radius round(max(H, W) |f|) of each FFT frequency [H, W] (f in cycles per pixel)."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    return np.rint(max(height, width) * np.hypot(fy, fx)).astype(np.int64)


def radial_power(images: np.ndarray) -> np.ndarray:
    """Radially averaged luma power spectrum of each image: uint8 [N, H, W, 3] -> [N, min(H, W) // 2]
    (bin r - 1 holds radius r)."""
    y = luma(images)  # [N, H, W]
    height, width = y.shape[1:]
    power = np.abs(np.fft.fft2(y - y.mean(axis=(1, 2), keepdims=True))) ** 2 / (height * width)  # [N, H, W]
    bins = radial_bins(height, width).ravel()  # [H W], values 0..0.71 max(H, W)
    width_bins = max(height, width) + 1
    counts = np.bincount(bins, minlength=width_bins)  # [max(H, W) + 1]
    per_image = (bins[None, :] + width_bins * np.arange(len(y))[:, None]).ravel()  # one bin range per image
    sums = np.bincount(per_image, weights=power.ravel(), minlength=len(y) * width_bins).reshape(len(y), width_bins)
    radii = min(height, width) // 2
    return sums[:, 1 : radii + 1] / counts[1 : radii + 1]  # [N, R]


def dct_energy(images: np.ndarray, codec: DCTCodec) -> np.ndarray:
    """Squared block-DCT coefficients summed over images, tokens and blocks per plane (Y, Cb, Cr) and zigzag
    frequency: uint8 [N, H, W, 3] -> [3, B*B] float64."""
    squared = codec.analyze(images).double().square().sum(dim=(0, 1)).numpy()  # [6, B*B]
    planes = np.array(YCBCR_420_BLOCKS)
    return np.stack([squared[planes == plane].sum(axis=0) for plane in PLANES])  # [3, B*B]


@dataclass
class SpectralStats:
    """Mean radial power spectrum [R] and mean DCT energy [3, B*B] of an image set."""

    frequencies: np.ndarray  # [R], cycles per pixel
    power: np.ndarray  # [R]
    energy: np.ndarray  # [3, B*B], zigzag order
    block_size: int
    count: int


def spectral_stats(batches: Iterable[np.ndarray], block_size: int) -> SpectralStats:
    """Mean radial spectrum and DCT energy over batches of uint8 images [b, H, W, 3] of one size."""
    power_sum, energy_sum, count, codec = None, None, 0, None
    for batch in batches:
        if codec is None:
            # float64 analysis; the codec validates the image size against the block size
            codec = DCTCodec(batch.shape[1:3], block_size, keep=block_size**2, dtype=torch.float64)
        power, energy = radial_power(batch).sum(axis=0), dct_energy(batch, codec)
        power_sum = power if power_sum is None else power_sum + power
        energy_sum = energy if energy_sum is None else energy_sum + energy
        count += len(batch)
    if codec is None:
        raise ValueError("spectral statistics need at least one image")
    height, width = codec.resolution
    tokens = height * width // (2 * block_size) ** 2
    blocks_per_image = tokens * np.array([4, 1, 1])  # a token holds 4 Y blocks, 1 Cb and 1 Cr block (4:2:0)
    frequencies = np.arange(1, min(height, width) // 2 + 1) / max(height, width)
    energy = energy_sum / (count * blocks_per_image[:, None])
    return SpectralStats(frequencies, power_sum / count, energy, block_size, count)


def log_ratio(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """ln(samples / reference) where both are positive, NaN elsewhere."""
    valid = (samples > 0) & (reference > 0)
    return np.where(valid, np.log(np.where(valid, samples, 1.0) / np.where(valid, reference, 1.0)), np.nan)


def band_ratios(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """samples / reference of the summed values in the low, mid and high third of the bins (last axis)."""
    edges = np.linspace(0, samples.shape[-1], len(BANDS) + 1).round().astype(int)
    ratios = {}
    for band, start, stop in zip(BANDS, edges[:-1], edges[1:]):
        total = reference[..., start:stop].sum()
        ratios[band] = float(samples[..., start:stop].sum() / total) if total > 0 else float("nan")
    return ratios


def spectral_metrics(samples: SpectralStats, reference: SpectralStats) -> dict[str, float]:
    """Spectral distances (mean |ln ratio|) and band energy ratios of samples against the reference."""
    metrics = {"spectrum_distance": float(np.nanmean(np.abs(log_ratio(samples.power, reference.power))))}
    metrics |= {f"spectrum_ratio_{band}": value for band, value in band_ratios(samples.power, reference.power).items()}
    metrics["dct_energy_distance"] = float(np.nanmean(np.abs(log_ratio(samples.energy, reference.energy))))
    for index, plane in enumerate(PLANES):
        ratios = band_ratios(samples.energy[index], reference.energy[index])
        metrics |= {f"dct_energy_ratio_{plane}_{band}": value for band, value in ratios.items()}
    return metrics


def csv_tables(samples: SpectralStats, reference: SpectralStats) -> dict[str, bytes]:
    """``spectrum.csv`` (radius, frequency, powers, ratio) and ``dct_energy.csv`` (plane, zigzag index,
    row, col, energies, ratio): file name -> content."""
    spectrum, energy = io.StringIO(), io.StringIO()
    writer = csv.writer(spectrum)
    writer.writerow(["radius", "frequency", "power_samples", "power_reference", "ratio"])
    for radius, (f, s, r) in enumerate(zip(reference.frequencies, samples.power, reference.power), start=1):
        writer.writerow([radius, f, s, r, s / r if r > 0 else float("nan")])
    b = reference.block_size
    raster = zigzag_order(b)
    writer = csv.writer(energy)
    writer.writerow(["plane", "zigzag", "row", "col", "energy_samples", "energy_reference", "ratio"])
    for p, plane in enumerate(PLANES):
        for z in range(b * b):
            s, r = samples.energy[p, z], reference.energy[p, z]
            writer.writerow([plane, z, raster[z] // b, raster[z] % b, s, r, s / r if r > 0 else float("nan")])
    return {"spectrum.csv": spectrum.getvalue().encode(), "dct_energy.csv": energy.getvalue().encode()}


def plot(samples: SpectralStats, reference: SpectralStats, title: str = "") -> bytes:
    """spectrum.png: radial spectra (log-log, left) and DCT energy per zigzag frequency and plane (log, right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    left.loglog(reference.frequencies, reference.power, "-", color="black", label="reference")
    left.loglog(samples.frequencies, samples.power, "--", color="tab:red", label="samples")
    left.set_xlabel("spatial frequency (cycles / pixel)")
    left.set_ylabel("luma power")
    left.legend(fontsize=8)
    zigzag = np.arange(reference.block_size**2)
    for p, (plane, colour) in enumerate(zip(PLANES, ("black", "tab:blue", "tab:orange"))):
        right.semilogy(zigzag, np.maximum(reference.energy[p], 1e-12), "-", color=colour, label=f"{plane} reference")
        right.semilogy(zigzag, np.maximum(samples.energy[p], 1e-12), "--", color=colour, label=f"{plane} samples")
    right.set_xlabel(f"zigzag frequency ({reference.block_size} x {reference.block_size} DCT)")
    right.set_ylabel("mean squared coefficient")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig)
