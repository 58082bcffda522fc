"""Generate images from a trained model with Ray: one model copy per actor, one actor per GPU where the
cluster has GPUs (docs/ARCHITECTURE.md, "Sampling and evaluation").

    dctdiff sample --checkpoint outputs/runs/demo-dct-.../checkpoint_... --num 64 --output outputs/samples
    dctdiff sample --checkpoint nnet_ema.pth --preset cifar10 --num 50000 --output s3://bucket/samples/cifar10

``--checkpoint`` is one of our checkpoint folders, a training run folder (its newest checkpoint is
used), or a published DCTdiff / U-ViT ``.pth`` / ``.safetensors`` whose codec settings come from
``--preset`` and ``--set`` (e.g. ``--set data.eta=242.382``). Image i is generated from seed
``--seed-start + i`` alone, so the output does not depend on ``--workers`` or ``--batch-size``.
Writes ``OUTPUT/{seed:06d}.png`` and ``OUTPUT/images.npz`` (uint8 [N, H, W, 3] under ``images``,
and the ``seeds`` and ``labels``). The actors only sample; the driver, which receives every image for
``images.npz`` anyway, encodes and writes the PNGs in a thread pool while the actors sample the next batches.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dctdiff.core.generation import generate_images
from dctdiff.core.precision import Precision
from dctdiff.core.samplers import SAMPLERS
from dctdiff.core.uvit import load_official_checkpoint
from dctdiff.infra import storage
from dctdiff.infra.logs import rate, show_progress
from dctdiff.infra.ray_cluster import ends_on_lost_cluster, init_ray, plan_gpu_actors, plan_worker_cpus, reserved_device
from dctdiff.models.builders import build_codec, build_noise_schedule, load_ema_sampling
from dctdiff.models.config import ConfigError, build_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSpec:
    """Everything an actor needs to rebuild the model and sample (plain data, cheap to ship)."""

    checkpoint: str
    preset: str = "demo"
    overrides: tuple[str, ...] = ()
    sampler: str | None = None  # None: the run's cadence.sampler (published checkpoints: the --preset's)
    nfe: int | None = None  # None: the run's cadence.sample_nfe (published checkpoints: the --preset's)
    guidance_scale: float = 1.0
    labels: tuple[int, ...] = ()  # cycled over the seeds; empty: unconditional (or the null label)
    batch_size: int = 64
    precision: Precision = "auto"  # the network's: bf16 on GPU, fp32 on CPU (dctdiff.core.precision)
    compile: bool = False  # torch.compile the network in every actor (also when the run trained with model.compile)


def load_sampler(spec: SamplingSpec, device: torch.device):
    """(model, codec, schedule, config) for a checkpoint of ours or a published one."""
    storage.require_exists(
        spec.checkpoint, "--checkpoint", "give a checkpoint folder, a run folder or a published .pth"
    )
    if spec.checkpoint.endswith((".pth", ".pt", ".safetensors")):
        config = build_config(spec.preset, overrides=list(spec.overrides))
        if config.data.eta is None and config.data.space == "dct":
            raise ConfigError("a published checkpoint needs eta: use a paper --preset or --set data.eta=...")
        model = load_official_checkpoint(spec.checkpoint).to(device).eval()
        codec = build_codec(config, config.data.eta or 1.0)
        if (model.config.num_tokens, model.config.token_dim) != (codec.num_tokens, codec.token_dim):
            raise ConfigError(
                f"{spec.checkpoint} expects {model.config.num_tokens} tokens of dim {model.config.token_dim}, but "
                f"preset {spec.preset!r} makes {codec.num_tokens} of dim {codec.token_dim}: pick the matching "
                "--preset or --set data.resolution/block_size/keep"
            )
        return model, codec, build_noise_schedule(config), config
    return load_ema_sampling(spec.checkpoint, device)


PNG_THREADS = 4  # the driver's PNG encoders (zlib releases the GIL)


class SampleActor:
    """Holds one model on the device Ray reserved for it (``reserved_device``: its GPU, else the CPU);
    turns a batch of seed offsets into images."""

    def __init__(self, spec: SamplingSpec, seed_start: int) -> None:
        self.device = reserved_device()
        self.spec = spec
        self.seed_start = seed_start
        self.model, self.codec, self.noise_schedule, config = load_sampler(spec, self.device)
        if spec.compile or config.model.compile:
            self.model = torch.compile(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seeds = batch["id"].astype(np.int64) + self.seed_start  # [n] image seeds
        labels = label_for(seeds, self.spec.labels)
        images = generate_images(
            self.model, self.codec, self.noise_schedule, seeds.tolist(), self.spec.sampler, self.spec.nfe,
            labels=None if labels is None else labels.tolist(), guidance_scale=self.spec.guidance_scale,
            device=self.device, batch_size=self.spec.batch_size, precision=self.spec.precision,
        )  # fmt: skip
        return {
            "seed": seeds,
            "image": images.numpy(),
            "label": labels if labels is not None else np.full(len(seeds), -1),
        }


def write_png(uri: str, image: np.ndarray) -> None:
    """One uint8 image [H, W, 3] as a PNG file (path or URI)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


def label_for(seeds: np.ndarray, labels: tuple[int, ...]) -> np.ndarray | None:
    """Class label of each seed: ``labels`` cycled by seed index, or None (unconditional)."""
    if not labels:
        return None
    return np.asarray(labels, dtype=np.int64)[seeds % len(labels)]


@ends_on_lost_cluster
def run(spec: SamplingSpec, num: int, output: str, seed_start: int = 0, workers: int | None = None,
        gpus_per_worker: float | None = None, address: str | None = None, progress: bool = True) -> np.ndarray:  # fmt: skip
    """Generate ``num`` images for seeds seed_start.. into ``output``; returns them uint8 [num, H, W, 3].

    ``workers`` / ``gpus_per_worker`` None: one actor per GPU of the cluster, one GPU each (one actor on
    CPUs without GPUs); ``gpus_per_worker=0`` samples on CPUs even on a GPU cluster (``plan_gpu_actors``).
    """
    import ray

    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    _, _, _, config = load_sampler(spec, torch.device("cpu"))  # fail fast here, not in an actor, on a bad checkpoint
    spec = replace(spec, sampler=spec.sampler or config.cadence.sampler, nfe=spec.nfe or config.cadence.sample_nfe)
    if spec.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {spec.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    logger.info("sampler %s, %d network evaluations per image", spec.sampler, spec.nfe)
    init_ray(address)
    resources = ray.cluster_resources()
    workers, gpus_per_worker = plan_gpu_actors(workers, gpus_per_worker, resources.get("GPU", 0.0))
    cpus = plan_worker_cpus(workers, resources.get("CPU", 0.0), resources.get("GPU", 0.0), None, gpus_per_worker)
    logger.info("%d sampling actor(s), %g GPU and %g CPU each", workers, gpus_per_worker, cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    seeds = ray.data.range(num, override_num_blocks=max(1, min(num, workers * 4)))
    images = seeds.map_batches(
        SampleActor,
        fn_constructor_args=(spec, seed_start),
        batch_size=spec.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker,
        num_cpus=cpus,
    )
    start = time.perf_counter()
    result: np.ndarray | None = None
    labels = np.full(num, -1, dtype=np.int64)
    writes: list[Future] = []
    with (
        ThreadPoolExecutor(PNG_THREADS, thread_name_prefix="png") as pngs,
        tqdm(total=num, unit="img", desc="sampling", disable=not show_progress(progress)) as bar,
    ):
        for batch in images.iter_batches(batch_size=None, batch_format="numpy"):
            if result is None:
                result = np.zeros((num, *batch["image"].shape[1:]), dtype=np.uint8)
            result[batch["seed"] - seed_start] = batch["image"]
            labels[batch["seed"] - seed_start] = batch["label"]
            writes += [
                pngs.submit(write_png, storage.join(output, f"{seed:06d}.png"), image)
                for seed, image in zip(batch["seed"].tolist(), batch["image"])
            ]  # encoded while the actors sample the next batches
            bar.update(len(batch["seed"]))
        for write in writes:
            write.result()  # a failed write raises here
    elapsed = time.perf_counter() - start
    with tempfile.TemporaryFile() as handle:
        np.savez(handle, images=result, seeds=np.arange(seed_start, seed_start + num), labels=labels)
        handle.seek(0)
        storage.write_bytes(storage.join(output, "images.npz"), handle.read())
    logger.info(
        "sampled %d images in %.1f s (%s) with %d worker(s) -> %s", num, elapsed, rate(num, elapsed), workers, output
    )
    return result
