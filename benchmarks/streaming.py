"""Training input at scale, in one run (GitHub issue 22, bullet 4):

1. the demo model trained on a prepared dataset larger than ``batch_order.MATERIALIZE_BYTES``, read as
   training reads it: once in one window (materialised) vs in shuffle windows of ``WINDOW_BYTES`` a window
   ahead (streaming); images/s after a warm-up, and the peak memory (RSS) of each, each in a fresh process;
2. one epoch of batches read without training: the windowed reader against Ray Data's full
   ``random_shuffle()`` and its local shuffle buffer (the input path before issue 22), the choices
   docs/ARCHITECTURE.md "Training data order" weighs;
3. the host cost per row of the input path (row groups read from Parquet, the batch gathered, then
   ``device_batches.batch_from_rows`` on the CPU) at the cifar10 and ffhq256 shapes, and from it the CPUs a
   GPU needs to be fed at its modelled images/s (``host_path.modelled_step_ms``).

    python -m benchmarks.streaming [--gib 1.5] [--steps 600] [--warmup 20] [--batch 64] [--folder DIR]

The dataset (64 x 64 colour photo crops, B = 2, float16: 12 KiB a row) is written once into --folder
(default outputs/bench-streaming) as prepare writes it: shards of 2048 rows in row groups of 256, its
first 2048 crops repeated under new ids until the size is reached (the reader's cost does not depend on
the values). Steps are timed only after the warm-up, so the materialised side's initial read of the
whole set is reported apart ("first batch s").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.host_path import median_ms, modelled_step_ms
from dctdiff.core.codec import DCTCodec
from dctdiff.data import shards
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.row_group_reader import RowGroups, WindowReader
from dctdiff.data.shards import COEFFICIENT_DIR, CodecParams, write_shard
from dctdiff.data.statistics import coefficient_histogram, compute_stats, write_stats
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import build_config
from dctdiff.training import batch_order
from dctdiff.training.batch_order import BatchPlan, take, worker_batches
from dctdiff.training.dataset_info import load_dataset_info
from dctdiff.training.device_batches import batch_from_rows
from dctdiff.training.trainer import Trainer

RESOLUTION, SHARD_ROWS = 64, 2048
MODES = ("materialised", "streaming")
READERS = ("windowed", "ray-random-shuffle", "ray-local-buffer")
SHAPES = (("cifar10", 256), ("ffhq256", 32))  # preset, batch per GPU (as benchmarks.host_path)


def write_dataset(folder: Path, params: CodecParams, images: np.ndarray, target_bytes: int) -> None:
    """Shards of SHARD_ROWS rows of ``images``' coefficients (repeated under new ids) up to target_bytes,
    and stats.json; nothing is written when the folder already holds them."""
    if (folder / "stats.json").exists():
        return
    codec = DCTCodec(params.resolution, params.block_size, params.block_size**2, colour=params.colour)
    coefficients = codec.analyze(images).numpy()  # [n, L, blocks, B^2]
    labels = np.arange(len(images), dtype=np.int32) % 10
    (folder / COEFFICIENT_DIR).mkdir(parents=True, exist_ok=True)
    copies = -(-target_bytes // (len(images) * params.row_bytes))
    for k in range(copies):
        ids = [f"copy{k:04d}/{i:05d}" for i in range(len(images))]
        write_shard(str(folder / COEFFICIENT_DIR / f"part-{k:06d}.parquet"), ids, labels, coefficients, params)
    histogram = coefficient_histogram(coefficients, params.token_layout)
    counts = {"read": len(images), "written": len(images), "rejected": 0}
    write_stats(str(folder / "stats.json"), compute_stats(histogram, params.token_layout, counts, params.to_dict()))


def train_child(folder: str, mode: str, steps: int, warmup: int, batch: int) -> dict[str, float]:
    """In a fresh process: the demo model trained ``steps`` steps from the dataset read as ``mode``."""
    if mode == "materialised":
        batch_order.MATERIALIZE_BYTES = 2**62  # one window, whatever the size
    torch.set_num_threads(2)
    config = build_config("demo", overrides=[f"data.resolution={RESOLUTION}", f"optim.batch_size={batch}"])
    info = load_dataset_info(folder, config)
    codec = build_codec(config, info.eta, info.colour)
    trainer = Trainer(config, codec, build_model(config, codec), info.entropy, torch.device("cpu"))
    plan = BatchPlan.for_run(info, 0, batch)
    reader = WindowReader(info.shard_files, plan.groups, ["id", "label", info.column])
    start = time.perf_counter()
    first_batch = timed = None
    try:
        for step, rows in enumerate(worker_batches(plan, reader, 0)):
            if step == 1:
                first_batch = time.perf_counter() - start
            if step == warmup:
                timed = time.perf_counter()
            if step == steps:
                break
            trainer.train_step(batch_from_rows(rows, config, codec, info.column, torch.device("cpu")))
    finally:
        reader.close()
    return {
        "images_per_s": (steps - warmup) * batch / (time.perf_counter() - timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_batch_s": first_batch,
        "windows_read": len(reader.read_windows),
        "rows_per_window": plan.rows_per_window,
        "rows": info.rows,
        "data_gib": info.rows * info.row_bytes / 2**30,
    }


def read_epoch_child(folder: str, reader_kind: str, batch: int) -> dict[str, float]:
    """In a fresh process: seconds to read one epoch of ``batch``-row NumPy batches with ``reader_kind``."""
    config = build_config("demo", overrides=[f"data.resolution={RESOLUTION}", f"optim.batch_size={batch}"])
    info = load_dataset_info(folder, config)
    columns = ["id", "label", info.column]
    start = time.perf_counter()
    rows = 0
    if reader_kind == "windowed":
        plan = BatchPlan.for_run(info, 0, batch)
        reader = WindowReader(info.shard_files, plan.groups, columns)
        batches = worker_batches(plan, reader, 0)
        for _ in range(plan.steps_per_epoch):
            rows += len(next(batches)["id"])
        reader.close()
    else:
        import ray.data

        from dctdiff.infra.ray_cluster import init_ray

        init_ray(num_cpus=2)
        start = time.perf_counter()  # Ray's start-up is not the reader's cost
        dataset = ray.data.read_parquet(info.shards_uri).select_columns(columns)
        if reader_kind == "ray-random-shuffle":
            dataset = dataset.random_shuffle(seed=0)
            options = {}
        else:
            options = {"local_shuffle_buffer_size": 4 * batch, "local_shuffle_seed": 0}
        for rows_batch in dataset.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True, **options):
            rows += len(rows_batch["id"])
    return {"seconds": time.perf_counter() - start, "rows": rows}


def decode_rows(repeats: int) -> list[dict[str, float | str]]:
    """Host microseconds per row of the input path at each shape, and the CPUs that feed one modelled GPU."""
    import tempfile

    rows = []
    for preset, batch in SHAPES:
        config = build_config(preset, overrides=[f"optim.batch_size={batch}"])
        codec = build_codec(config, eta=config.data.eta or 1.0)
        params = CodecParams(config.data.resolution, config.data.block_size)
        count = max(2 * batch, 4 * shards.ROW_GROUP_ROWS)
        values = np.random.default_rng(0).normal(0, 50, (count, *params.shape)).astype(np.float16)
        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/part.parquet"
            write_shard(path, [f"{preset}/train/{i:07d}.png" for i in range(count)], np.zeros(count, np.int32),
                        values, params)  # fmt: skip
            groups = shards.row_group_rows(path)
            window = np.arange(len(groups))
            plan = BatchPlan(RowGroups.from_counts([groups]), 0, batch, count)
            order = plan.order(0)

            def read_window() -> None:
                shards.read_row_groups(path, window.tolist(), ["id", "label", "coefficients"])

            reader = WindowReader([path], plan.groups, ["id", "label", "coefficients"])
            reader.window(window)
            cpu = torch.device("cpu")

            def gather_and_convert() -> None:
                batch_from_rows(take(order, reader, 0, batch), config, codec, "coefficients", cpu)

            read_us = 1e3 * median_ms(read_window, repeats) / count
            batch_us = 1e3 * median_ms(gather_and_convert, repeats) / batch
            reader.close()
        per_row_s = (read_us + batch_us) / 1e6
        gpu_images_per_s = batch / (modelled_step_ms(config, codec, batch) / 1e3)
        rows.append({
            "shape": f"{preset} {codec.num_tokens}x{params.shape[1]}x{params.shape[2]} float16, "
                     f"{params.row_bytes // 1024} KiB/row",
            "read_us": read_us, "batch_us": batch_us, "gpu_images_per_s": gpu_images_per_s,
            "cpus": gpu_images_per_s * per_row_s,
        })  # fmt: skip
    return rows


def child(args: argparse.Namespace, kind: str) -> dict[str, float]:
    """Run one measurement in a fresh Python process (its own peak RSS) and return its JSON result."""
    command = [sys.executable, "-m", "benchmarks.streaming", "--child", kind, "--folder", str(args.folder),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    print(f"{kind}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.5, help="dataset size (above MATERIALIZE_BYTES)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per decode cell (median)")
    parser.add_argument("--folder", type=Path, default=Path("outputs/bench-streaming"))
    parser.add_argument("--child", choices=MODES + READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in MODES:
        json.dump(train_child(str(args.folder), args.child, args.steps, args.warmup, args.batch), sys.stdout)
        return
    if args.child in READERS:
        json.dump(read_epoch_child(str(args.folder), args.child, args.batch), sys.stdout)
        return
    params = CodecParams(RESOLUTION, 2)
    print(f"writing {args.gib} GiB of {RESOLUTION}x{RESOLUTION} shards into {args.folder} (once) ...", flush=True)
    write_dataset(args.folder, params, photo_crops(SHARD_ROWS, RESOLUTION, seed=0), int(args.gib * 2**30))
    results = {mode: child(args, mode) for mode in MODES}
    base = results["materialised"]
    print(f"\ndemo model, {base['rows']} rows ({base['data_gib']:.2f} GiB), batch {args.batch}, "
          f"{args.steps - args.warmup} timed steps, 2 threads:")  # fmt: skip
    print("| input | images/s | vs materialised | peak RSS MiB | first batch s | windows read (rows each) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['images_per_s']:.0f} | {r['images_per_s'] / base['images_per_s']:.1%} | "
            f"{r['peak_rss_mib']:.0f} | {r['first_batch_s']:.1f} | {r['windows_read']} ({r['rows_per_window']}) |"
        )
    epochs = {kind: child(args, kind) for kind in READERS}
    print(f"\none epoch of batches of {args.batch} read without training (2 CPUs):")
    print("| reader | seconds | rows/s | vs windowed |")
    print("|---|---:|---:|---:|")
    for kind, r in epochs.items():
        print(
            f"| {kind} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:.0f} | "
            f"{r['seconds'] / epochs['windowed']['seconds']:.2f}x |"
        )
    print("\nhost cost of the input path per row (one process, 1 thread) and CPUs per GPU at the modelled H100 rate:")
    torch.set_num_threads(1)
    print("| shape | read µs/row | gather + batch_from_rows µs/row | modelled GPU images/s | CPUs per GPU |")
    print("|---|---:|---:|---:|---:|")
    for r in decode_rows(args.repeats):
        print(
            f"| {r['shape']} | {r['read_us']:.1f} | {r['batch_us']:.1f} | {r['gpu_images_per_s']:.0f} | "
            f"{r['cpus']:.2f} |"
        )


if __name__ == "__main__":
    main()
