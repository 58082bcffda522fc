"""Prepare throughput: the Ray Data job against a plain single-process loop and against decoding alone.

    python benchmarks/prepare.py [--images 20000] [--sizes 32 64] [--shard-rows N] [--rounds 3]

For each size, a folder of PNG files (photo crops, CIFAR-like) is written once, then in the same run:
- decode alone (the floor): read + decode to RGB of the known files, one process;
- plain loop: the same work as the job in one process — list the folder, read, decode, fit,
  DCTCodec.analyze, histograms, pyarrow write — with the same shard size;
- Ray Data job: ``run_prepare`` on the warm local Ray (started and warmed before timing; its workers
  at the same CPU priority as this process).
The three are repeated in interleaved rounds and the best rate of each is shown, with the ratios
(targets on a 2-core machine: job >= 1.6x the plain loop, and at least half the decode-alone rate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dctdiff.ray_utils import init_ray, keep_ray_on_loopback  # noqa: E402

keep_ray_on_loopback()  # before Ray is first imported (DESIGN.md §9)

from dctdiff import storage  # noqa: E402
from dctdiff.images import FitSpec, decode, prepare_encoded  # noqa: E402
from dctdiff.photos import photo_crops  # noqa: E402
from dctdiff.prepare import PrepareConfig, analyze_images, run_prepare  # noqa: E402
from dctdiff.shards import CodecParams, write_shard  # noqa: E402
from dctdiff.stats import coefficient_histogram  # noqa: E402

UNIQUE = 500  # distinct crops; the folder repeats them under different names


def write_folder(folder: Path, count: int, size: int) -> list[Path]:
    crops = photo_crops(UNIQUE, size, seed=0)
    encoded = []
    for crop in crops:
        path = folder / "tmp.png"
        Image.fromarray(crop).save(path)
        encoded.append(path.read_bytes())
    files = []
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded[i % UNIQUE])
        files.append(path)
    (folder / "tmp.png").unlink()
    return files


def decode_alone(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        np.asarray(decode(path.read_bytes()))
    return len(files) / (time.perf_counter() - start)


def plain_loop(folder: Path, size: int, block: int, rows: int, output: Path) -> float:
    """The job's work in one process, without Ray: list, read, decode, fit, analyze, histograms, write."""
    import torch

    torch.set_num_threads(1)
    params, spec = CodecParams(size, block), FitSpec(size)
    output.mkdir(parents=True)
    start = time.perf_counter()
    files = [folder / entry.relative for entry in storage.list_files(str(folder))]
    for index, first in enumerate(range(0, len(files), rows)):
        chunk = files[first : first + rows]
        pixels = [prepare_encoded(path.read_bytes(), spec) for path in chunk]
        coefficients = analyze_images(params, pixels)
        coefficient_histogram(coefficients, block)
        ids = [str(path) for path in chunk]
        write_shard(str(output / f"part-{index:06d}.parquet"), ids, np.full(len(ids), -1), coefficients, params)
    return len(files) / (time.perf_counter() - start)


def ray_job(folder: Path, size: int, block: int, rows: int | None, output: Path) -> float:
    config = PrepareConfig(
        source=f"folder:{folder}", output=str(output), resolution=size, block_size=block, shard_rows=rows,
        unlabeled=True, progress=False,
    )
    start = time.perf_counter()
    report = run_prepare(config)
    return report["images"]["written"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--block-size", type=int, default=2)
    parser.add_argument("--shard-rows", type=int, help="rows per shard (default: the job's default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is shown")
    args = parser.parse_args()

    # Ray workers run at nice 15 by default; on a machine shared with other work that would starve them
    # against the single-process loops. Same priority for all three measurements.
    os.environ.setdefault("RAY_worker_niceness", "0")
    init_ray()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    results = []
    try:
        warm = work / "warm"
        warm.mkdir()
        write_folder(warm, 64, 32)
        ray_job(warm, 32, 2, 16, work / "warm-out")  # start the workers and import everything once
        for size in args.sizes:
            folder = work / f"images{size}"
            folder.mkdir()
            files = write_folder(folder, args.images, size)
            rows = args.shard_rows or PrepareConfig("photos", "-", size, args.block_size).rows_per_shard()
            best = [0.0, 0.0, 0.0]
            for round_ in range(args.rounds):  # interleaved rounds, best of each: robust to background load
                out = work / f"round{round_}-{size}"
                measured = (
                    decode_alone(files),
                    plain_loop(folder, size, args.block_size, rows, out / "plain"),
                    ray_job(folder, size, args.block_size, args.shard_rows, out / "job"),
                )
                best = [max(b, m) for b, m in zip(best, measured)]
                shutil.rmtree(out)
            results.append((size, rows, *best))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.images} PNG images per size, block size {args.block_size}, 1 process vs Ray Data on the local Ray "
          f"({os.cpu_count()} CPUs; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)")
    print(f"{'size':>5} {'rows/shard':>10} {'decode alone':>13} {'plain loop':>11} {'Ray job':>9} {'job/plain':>10} "
          f"{'job/decode':>11}")
    for size, rows, floor, plain, job in results:
        print(f"{size:>5} {rows:>10} {floor:>11.0f}/s {plain:>9.0f}/s {job:>7.0f}/s {job / plain:>9.2f}x "
              f"{job / floor:>10.2f}x")


if __name__ == "__main__":
    main()
