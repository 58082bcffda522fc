"""FID Inception feature extraction throughput, in-process and as the Ray Data job, in one run.

    python -m benchmarks.fid [--images 64] [--resolution 32] [--batch-sizes 8 32] [--device cuda] [--no-ray]

Prints images/s of ``extract_features`` for each batch size, and of the Ray Data job
(``dctdiff.evaluation.feature_job.dataset_moments``: one actor per GPU, else per node; the job start-up included),
with ratios against the first in-process row.
"""

from __future__ import annotations

import argparse
import time

import torch

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.evaluation.fid import extract_features, load_inception
from dctdiff.evaluation.image_sets import ArrayImages


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32, help="input size (resized to 299 inside)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data job")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    images = photo_crops(args.images, args.resolution, seed=0)
    model = load_inception(device=device)
    extract_features(images[: args.batch_sizes[0]], model, args.batch_sizes[0])  # warm-up
    sync()

    rows = []
    for batch_size in args.batch_sizes:
        seconds = timed(lambda: (extract_features(images, model, batch_size), sync()))
        setting = f"in-process, batch {batch_size} ({device}, {torch.get_num_threads()} threads)"
        rows.append((setting, args.images / seconds))
    if not args.no_ray:
        from dctdiff.evaluation.feature_job import dataset_moments
        from dctdiff.infra.ray_cluster import init_ray

        init_ray()
        batch_size = args.batch_sizes[0]
        dataset = ArrayImages("bench", images).to_dataset()
        seconds = timed(lambda: dataset_moments(dataset, total=args.images, batch_size=batch_size, progress=False))
        rows.append((f"Ray Data job, batch {batch_size} (incl. start-up)", args.images / seconds))

    print(f"\nFID Inception-v3 features, {args.images} images {args.resolution}x{args.resolution} -> 299x299")
    print(f"{'setting':<58} {'images/s':>9} {'ratio':>6}")
    for name, rate in rows:
        print(f"{name:<58} {rate:>9.1f} {rate / rows[0][1]:>6.2f}")


if __name__ == "__main__":
    main()
