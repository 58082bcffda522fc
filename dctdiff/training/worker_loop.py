"""The training loop that runs on every Ray Train worker (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

import itertools
import logging
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dctdiff.core.codec import Codec
from dctdiff.data.row_group_reader import WindowReader
from dctdiff.infra.logs import configure_logging
from dctdiff.training.batch_order import BatchPlan, worker_batches
from dctdiff.training.config import TrainConfig, config_from_dict
from dctdiff.data.shards import PIXEL_COLUMN
from dctdiff.training.dataset_info import DatasetInfo
from dctdiff.training.run_logger import RankZeroLogger, RunHandle
from dctdiff.training.failure_record import record_failure
from dctdiff.training.step_metrics import MetricWindow, NonFiniteLossError
from dctdiff.training.prefetch import prefetched
from dctdiff.training.randomness import id_keys
from dctdiff.training.trainer import Batch, Trainer, build_codec, build_model
from dctdiff.training.training_fid import load_reference, sample_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """What the driver hands every worker (plain data: Ray pickles it once per worker)."""

    config: dict[str, Any]  # the resolved TrainConfig as a dict
    info: DatasetInfo
    threads: int
    run: RunHandle | None
    fid_reference: str | None
    log_level: str = "INFO"
    resume_from: str | None = None  # the checkpoint the driver verified and chose (None: start at step 0)
    planned_checkpoints: tuple[str, ...] = ()  # folder names that existed when the driver chose resume_from
    failure_file: str | None = None  # where rank 0 records a NonFiniteLossError for the driver


def starting_checkpoint(settings: LoopSettings):
    """The ray.train.Checkpoint to restore: the newest one reported since this fit started (Ray Train restarted
    the workers after a failure), else the one the driver chose (it may skip a corrupt newest checkpoint)."""
    import ray.train

    reported = ray.train.get_checkpoint()
    if reported is not None and posixpath.basename(reported.path.rstrip("/")) not in settings.planned_checkpoints:
        return reported
    return ray.train.Checkpoint(settings.resume_from) if settings.resume_from else None


def batch_from_rows(
    rows: dict[str, np.ndarray], config: TrainConfig, codec: Codec, column: str, device: torch.device
) -> Batch:
    """A worker's share of a global batch of shard rows (``batch_order.worker_batches``) -> clean tokens
    for the codec being trained, on ``device``.

    ``column`` (DatasetInfo.column) is the coefficients, or for the pixel baseline the stored source
    pixels. The values travel to the device as stored (float16 coefficients or uint8 pixels) and become
    tokens there; values, labels and id keys go through pinned memory on CUDA, with non-blocking copies.
    On CUDA it runs in the prefetch thread (``prefetched``), a step ahead of the training step.
    """
    ids = np.asarray(rows["id"]).astype(str)  # [n] (no per-sample Python work)
    host = {"values": torch.from_numpy(np.array(rows[column])), "keys": id_keys(ids)}  # a writable copy
    if config.data.class_conditional:
        host["labels"] = torch.from_numpy(rows["label"].astype(np.int64))
    moved = {name: _to_device(tensor, device) for name, tensor in host.items()}
    if column == PIXEL_COLUMN:
        tokens = codec.encode(moved["values"])  # uint8 [n, R, R, C] -> [n, L, C P^2]: the source pixels
    else:
        tokens = codec.tokens_from_coefficients(moved["values"])  # [n, L, blocks, B^2]: keep m, divide by eta
    return Batch(tokens, moved.get("labels"), ids, moved["keys"])


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory and non-blocking on CUDA."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def check_ranks_agree(model: torch.nn.Module, world_size: int) -> None:
    """Raise if the DDP ranks ended with different weights (their gradients were not synchronised).

    The fingerprint stays on the model's device: the process group (gloo or nccl) serves it.
    """
    if world_size == 1:
        return
    import torch.distributed as dist

    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()])  # [P], on the device (NCCL)
    gathered = [torch.empty_like(fingerprint) for _ in range(world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
        raise RuntimeError("the DDP ranks ended with different weights: gradients were not synchronised")


def train_loop_per_worker(settings: LoopSettings) -> None:
    """Ray Train worker: restore the starting checkpoint if any, train to max_steps, report and log."""
    import ray.train
    import ray.train.torch

    configure_logging(settings.log_level)
    config = config_from_dict(settings.config)
    info = settings.info
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(settings.threads)
    device = ray.train.torch.get_device()
    codec = build_codec(config, info.eta, info.colour)
    torch.manual_seed(config.cadence.seed)  # same initial weights for any worker count (DDP broadcasts rank 0's)
    trainer = Trainer(config, codec, build_model(config, codec), info.entropy, device, wrap=ray.train.torch.prepare_model)
    checkpoint = starting_checkpoint(settings)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(directory)
    logger = RankZeroLogger(settings.run, rank)
    reference = load_reference(settings.fid_reference) if settings.fid_reference else None

    cadence = config.cadence
    plan = BatchPlan.for_run(info, cadence.seed, config.optim.batch_size)
    # Every worker reads the windows itself (docs/ARCHITECTURE.md, "Training data order").
    reader = WindowReader(info.shard_files, plan.groups, ["id", "label", info.column])
    rows = itertools.islice(worker_batches(plan, reader, trainer.step, rank, world), max(0, cadence.max_steps - trainer.step))
    prepared = (batch_from_rows(batch, config, codec, info.column, device) for batch in rows)
    window = MetricWindow()
    window_start = time.perf_counter()
    # On CUDA the next batch is made while the GPU runs this step; on a CPU both would share the same
    # cores, and the thread only added contention (README "Performance": 10-15% slower on 2 cores).
    try:
        for batch in prefetched(prepared, device=device) if device.type == "cuda" else prepared:
            window.add(trainer.train_step(batch))
            step = trainer.step
            last = step == cadence.max_steps
            save = step % cadence.checkpoint_every == 0 or last
            grid = cadence.sample_every > 0 and (step % cadence.sample_every == 0 or last)
            fid = cadence.fid_every > 0 and (step % cadence.fid_every == 0 or last)
            if step % cadence.log_every and not (save or grid or fid):
                continue
            elapsed = time.perf_counter() - window_start
            steps = len(window)
            try:
                metrics = window.reduce(world)  # the step's one collective and host sync
            except NonFiniteLossError as error:  # every rank is here at the same step
                report_failure(error, step, rank, settings.failure_file)
                return
            epoch = (step - 1) // plan.steps_per_epoch
            metrics.update(step=step, epoch=epoch, images_per_s=steps * config.optim.batch_size / elapsed)
            if fid:  # every rank samples its share of the seeds (a collective): fid, kid, kid_std
                metrics.update(sample_metrics(
                    trainer.sampling_model, codec, trainer.noise_schedule, reference, cadence.fid_samples,
                    cadence.sampler, cadence.sample_nfe, device=device, rank=rank, world=world,
                    precision=cadence.sample_precision,
                ))  # fmt: skip
            if rank == 0:
                log.info(
                    "step %d/%d loss %.4f lr %.2e %.1f img/s%s", step, cadence.max_steps, metrics["loss"],
                    metrics["lr"], metrics["images_per_s"],
                    f" FID {metrics['fid']:.2f} KID {metrics['kid']:.4f}" if fid else "",
                )  # fmt: skip
            logger.metrics(metrics, step)
            if grid:
                logger.sample_grid(trainer, step)
            report(trainer, metrics, save, rank, info)
            window_start = time.perf_counter()
    finally:
        reader.close()
    check_ranks_agree(trainer.model, world)
    logger.final_model(trainer, info.eta, info.colour)


def report_failure(error: NonFiniteLossError, step: int, rank: int, failure_file: str | None) -> None:
    """End this worker's loop after a deterministic failure without raising, so that Ray Train does not
    retry it (a retry would meet the same NaN): rank 0 records it for the driver to raise
    (``raise_recorded_failure``), so that the job prints it once; every rank reports (a collective)
    without a checkpoint, so the last good checkpoint stays the newest."""
    import ray.train

    if rank == 0 and failure_file is not None:
        record_failure(failure_file, error)
    elif rank == 0:
        log.error("%s", error)
    ray.train.report({"step": step, "failed_step": error.step})


def report(trainer: Trainer, metrics: dict[str, float], save: bool, rank: int, info: DatasetInfo) -> None:
    """ray.train.report from every worker (a collective); rank 0 attaches the checkpoint.

    The checkpoint is written to a local folder and uploaded to the run's storage in the background
    (``CheckpointUploadMode.ASYNC``; Ray deletes the local folder after the upload): the ranks go on
    training while it travels. Ray Train registers a checkpoint only once its upload is complete, and
    the manifest is its last file, so a resume never sees a partial one."""
    import ray.train

    if not (save and rank == 0):
        ray.train.report(metrics)
        return
    directory = tempfile.mkdtemp(prefix="dctdiff-checkpoint-")
    extra = {"config": trainer.config.to_dict(), "eta": info.eta, "colour": info.colour, "stats": info.stats}
    trainer.save(directory, extra)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(directory),
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        delete_local_checkpoint_after_upload=True,
    )
