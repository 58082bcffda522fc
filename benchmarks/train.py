"""Training benchmarks on this CPU, in one run: the host time per step on the critical path before vs
after (``benchmarks.host_path``, at the cifar10 and ffhq256 shapes, next to the modelled H100 step), and
the Ray Train overhead: images/s of pipelines/train.py (1 worker) against a bare PyTorch loop with the
same model, data, batch and training step.

    python -m benchmarks.train [--part all|host|ray] [--steps 200] [--batch 64] [--images 512] [--repeats 20]

Both sides run ``dctdiff.training.trainer.Trainer.train_step``; the Ray side adds the workers' reading of the
Parquet shards, the token conversion, DDP preparation and ``ray.train.report`` every ``--log-every``
steps. Throughput is taken after a warm-up window on both sides.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.host_path import host_table
from dctdiff.commands.train_command import parse_args
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import build_config
from dctdiff.training.train_job import train
from dctdiff.training.trainer import Batch, Trainer
from tests.prepared import write_prepared


def bare_loop(config, images, steps: int, warmup: int, threads: int) -> float:
    """images/s of Trainer.train_step on in-memory tokens (no Ray, no Parquet) with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    codec = build_codec(config, eta=242.0)
    trainer = Trainer(config, codec, build_model(config, codec), None, torch.device("cpu"))
    tokens = codec.encode(images)
    ids = [str(i) for i in range(len(images))]
    batch = config.optim.batch_size
    start = None
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        i = (step * batch) % (len(images) - batch + 1)
        trainer.train_step(Batch(tokens[i : i + batch], None, ids[i : i + batch]))
    return (steps - warmup) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--part", choices=("all", "host", "ray"), default="all", help="which table(s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per host-path cell (median)")
    args = parser.parse_args()
    if args.part in ("all", "host"):
        torch.set_num_threads(1)
        print("host time per training step on the critical path (one CPU thread):")
        print(host_table(args.repeats))
    if args.part in ("all", "ray"):
        ray_overhead(args)


def ray_overhead(args: argparse.Namespace) -> None:
    """The Ray Train vs bare-loop table."""
    settings = [
        "--set", f"optim.batch_size={args.batch}", "--set", f"cadence.log_every={args.log_every}",
        "--set", "cadence.sample_every=0", "--set", f"cadence.checkpoint_every={args.steps}",
        "--set", "diffusion.ebfr=false", "--max-steps", str(args.steps),
    ]  # fmt: skip
    images = photo_crops(args.images, 32, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_prepared(Path(tmp) / "data", images)
        request = parse_args(
            ["--data", str(data), *settings, "--storage", f"{tmp}/runs", "--mlflow-uri", f"sqlite:///{tmp}/m.db"]
        )
        result, run_id = train(request.config, request.options, request.tracking)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp}/m.db")
        threads = int(client.get_run(run_id).data.params["worker_threads"])  # the bare loop uses the same
        history = client.get_metric_history(run_id, "images_per_s")
        windows = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # skip the warm-up window
        ray_rate = sum(windows) / len(windows)
    bare_rate = bare_loop(build_config("demo", overrides=settings[1::2][:-1] + [f"cadence.max_steps={args.steps}"]),
                          images, args.steps, args.log_every, threads)  # fmt: skip
    print(f"{'loop':<28}{'images/s':>10}   (torch threads: {threads} on both sides)")
    print(f"{'bare PyTorch':<28}{bare_rate:>10.1f}")
    print(f"{'dctdiff train (Ray)':<28}{ray_rate:>10.1f}")
    print(f"Ray Train overhead: {100 * (1 - ray_rate / bare_rate):.1f}% (ratio {ray_rate / bare_rate:.3f})")


if __name__ == "__main__":
    main()
