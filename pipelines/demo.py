"""`make demo`: the DCT codec on the offline photo crops.

Crops a few bundled colour photos to 64x64, encodes and decodes them keeping 1..B*B frequencies
per block, prints the PSNR of each setting and writes outputs/codec_grid.png
(first row: originals, then one row per keep).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dctdiff.codec import DCTCodec
from dctdiff.grid import image_grid, save_png
from dctdiff.photos import photo_crops


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 image batches."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def codec_demo(output: Path, n_images: int = 8, resolution: int = 64, block_sizes: tuple[int, ...] = (2, 4)) -> Path:
    """Round-trip photo crops through the codec for each (block size, keep); print PSNR; save the grid."""
    originals = photo_crops(n_images, resolution, seed=0)
    rows = [originals]
    print(f"{'block':>5} {'keep':>4} {'tokens':>6} {'dim':>4} {'PSNR dB':>8}")
    for block in block_sizes:
        for keep in range(1, block * block + 1):
            codec = DCTCodec(resolution, block, keep)
            decoded = codec.decode(codec.encode(originals)).numpy()
            print(f"{block:>5} {keep:>4} {codec.num_tokens:>6} {codec.token_dim:>4} {psnr(decoded, originals):>8.2f}")
            if block == block_sizes[0]:
                rows.append(decoded)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "codec_grid.png"
    save_png(image_grid(rows), str(path), scale=2)
    print(f"wrote {path} (row 1: originals; rows 2..: B={block_sizes[0]}, keep = 1..{block_sizes[0] ** 2})")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs"))
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    codec_demo(args.output, args.images)


if __name__ == "__main__":
    main()
