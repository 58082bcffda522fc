"""Prepare throughput: the Ray Data job against a plain single-process loop and against decoding alone.

    python -m benchmarks.prepare [--images 50000] [--sizes 32 64] [--shard-rows N] [--rounds 3]

For each size, a folder of PNG files (photo crops, CIFAR-like) is written once, then in the same run:
- decode alone (the floor): read + decode to RGB of the known files, one process;
- plain loop: the same work as the job in one process — list the folder, read, decode, fit,
  DCTCodec.analyze, histograms, pyarrow write — with the same shard size;
- Ray Data job: ``run_prepare`` on the warm local Ray (started and warmed before timing; its workers
  at the same CPU priority as this process).
The three are repeated in interleaved rounds and the best rate of each is shown, with the ratios
(targets on a 2-core machine: job >= 1.6x the plain loop, and at least half the decode-alone rate),
and the CPU time per image summed over every process of a run (driver, raylet, workers): unlike the
rates, it does not depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.image_decoding import FitSpec, decode, prepare_encoded
from dctdiff.data.prepare_job import PrepareConfig, analyze_images, run_prepare
from dctdiff.data.shards import CodecParams, write_shard
from dctdiff.data.statistics import coefficient_histogram
from dctdiff.infra import storage
from dctdiff.infra.ray_cluster import init_ray

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


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants (the local Ray's raylet and
    workers included), from /proc: the cost of a run whatever else loads the machine."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def measured(run, images: int) -> tuple[float, float]:
    """(images/s, CPU microseconds per image over all the run's processes) of ``run()``."""
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return images / seconds, (tree_cpu_seconds() - cpu) / images * 1e6


def decode_alone(files: list[Path]) -> None:
    for path in files:
        np.asarray(decode(path.read_bytes()))


def plain_loop(folder: Path, size: int, block: int, rows: int, output: Path) -> None:
    """The job's work in one process, without Ray: list, read, decode, fit, analyze, histograms, write."""
    import torch

    torch.set_num_threads(1)
    params, spec = CodecParams(size, block), FitSpec(size)
    output.mkdir(parents=True)
    files = [folder / entry.relative for entry in storage.list_files(str(folder))]
    for index, first in enumerate(range(0, len(files), rows)):
        chunk = files[first : first + rows]
        pixels = [prepare_encoded(path.read_bytes(), spec) for path in chunk]
        coefficients = analyze_images(params, pixels)
        coefficient_histogram(coefficients, params.token_layout)
        ids = [str(path) for path in chunk]
        write_shard(str(output / f"part-{index:06d}.parquet"), ids, np.full(len(ids), -1), coefficients, params)


def ray_job(folder: Path, size: int, block: int, rows: int | None, output: Path) -> None:
    config = PrepareConfig(
        source=f"folder:{folder}",
        output=str(output),
        resolution=size,
        block_size=block,
        shard_rows=rows,
        unlabeled=True,
        progress=False,
    )
    run_prepare(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50000, help="images per size (default: CIFAR-10's 50k)")
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
            rows = args.shard_rows or PrepareConfig("photos", "-", size, args.block_size).rows_per_shard(
                CodecParams(size, args.block_size)
            )
            rates, cpus = [0.0] * 3, [float("inf")] * 3
            for round_ in range(args.rounds):  # interleaved rounds, best of each: robust to background load
                out = work / f"round{round_}-{size}"
                runs = (
                    lambda: decode_alone(files),
                    lambda: plain_loop(folder, size, args.block_size, rows, out / "plain"),
                    lambda: ray_job(folder, size, args.block_size, args.shard_rows, out / "job"),
                )
                for k, run in enumerate(runs):
                    rate, cpu = measured(run, len(files))
                    rates[k], cpus[k] = max(rates[k], rate), min(cpus[k], cpu)
                shutil.rmtree(out)
            results.append((size, rows, rates, cpus))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.images} PNG images per size, block size {args.block_size}, 1 process vs Ray Data on the local Ray "
        f"({os.cpu_count()} CPUs; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )
    print(
        f"{'size':>5} {'rows/shard':>10} {'decode alone':>13} {'plain loop':>11} {'Ray job':>9} {'job/plain':>10} "
        f"{'job/decode':>11}   CPU us/image: {'decode':>6} {'plain':>6} {'job':>6}"
    )
    for size, rows, (floor, plain, job), cpu in results:
        print(
            f"{size:>5} {rows:>10} {floor:>11.0f}/s {plain:>9.0f}/s {job:>7.0f}/s {job / plain:>9.2f}x "
            f"{job / floor:>10.2f}x   {'':>13}{cpu[0]:>6.0f} {cpu[1]:>6.0f} {cpu[2]:>6.0f}"
        )


if __name__ == "__main__":
    main()
