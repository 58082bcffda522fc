"""The training loop that runs on every Ray Train worker (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

import itertools
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import torch

from dctdiff.data.row_group_reader import WindowReader
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.mlflow_runs import RunHandle
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import config_from_dict
from dctdiff.training.batch_order import BatchPlan, worker_batches
from dctdiff.training.checkpoint_writer import BackgroundCheckpoints
from dctdiff.training.dataset_info import DatasetInfo
from dctdiff.training.device_batches import batch_from_rows
from dctdiff.training.failure_record import FirstStepError, record_failure
from dctdiff.training.periodic_fid import load_reference, sample_metrics
from dctdiff.training.prefetch import prefetched
from dctdiff.training.run_logger import RankZeroLogger
from dctdiff.training.step_metrics import MetricWindow, NonFiniteLossError
from dctdiff.training.trainer import Trainer

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
    failure_file: str | None = None  # where a worker records a deterministic failure for the driver


def starting_checkpoint(settings: LoopSettings):
    """The ray.train.Checkpoint to restore: the newest one reported since this fit started (Ray Train restarted
    the workers after a failure), else the one the driver chose (it may skip a corrupt newest checkpoint)."""
    import ray.train

    reported = ray.train.get_checkpoint()
    if reported is not None and posixpath.basename(reported.path.rstrip("/")) not in settings.planned_checkpoints:
        return reported
    return ray.train.Checkpoint(settings.resume_from) if settings.resume_from else None


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


@dataclass
class FitProgress:
    """How far this fit (this attempt of the run) got on this worker."""

    stepped: bool = False  # a training step completed


def train_loop_per_worker(settings: LoopSettings) -> None:
    """Ray Train worker: ``train_to_max_steps``. An exception raised before this fit's first step completed
    is deterministic (the same config, data and counter-based draws meet it on every attempt): it is
    recorded for the driver before it ends the worker, and ``no_retry.StopOnRecordedFailure`` ends the run
    instead of restarting it."""
    import ray.train

    progress = FitProgress()
    try:
        train_to_max_steps(settings, progress)
    except Exception as error:
        if progress.stepped or settings.failure_file is None:
            raise
        rank = ray.train.get_context().get_world_rank()
        record_failure(settings.failure_file, FirstStepError.of(error, rank))
        raise


def train_to_max_steps(settings: LoopSettings, progress: FitProgress) -> None:
    """Restore the starting checkpoint if any, train to max_steps, report and log."""
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
    trainer = Trainer(
        config, codec, build_model(config, codec), info.entropy, device, wrap=ray.train.torch.prepare_model
    )
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
    to_train = max(0, cadence.max_steps - trainer.step)
    rows = itertools.islice(worker_batches(plan, reader, trainer.step, rank, world), to_train)
    prepared = (batch_from_rows(batch, config, codec, info.column, device) for batch in rows)
    window = MetricWindow()
    checkpoints = BackgroundCheckpoints()  # rank 0's writes; the others never start one
    window_start = time.perf_counter()
    # On CUDA the next batch is made while the GPU runs this step; on a CPU both would share the same
    # cores, and the thread only added contention (README "Performance": 10-15% slower on 2 cores).
    try:
        for batch in prefetched(prepared, device=device) if device.type == "cuda" else prepared:
            window.add(trainer.train_step(batch))
            progress.stepped = True
            step = trainer.step
            last = step == cadence.max_steps
            save = step % cadence.checkpoint_every == 0 or last
            grid = cadence.sample_every > 0 and (step % cadence.sample_every == 0 or last)
            fid = cadence.fid_every > 0 and (step % cadence.fid_every == 0 or last)
            if step % cadence.log_every and not (save or grid or fid):
                continue
            elapsed = time.perf_counter() - window_start
            trainer.train_seconds += elapsed
            steps = len(window)
            try:
                metrics = window.reduce(world)  # the step's one collective and host sync
            except NonFiniteLossError as error:  # every rank is here at the same step
                report_failure(error, step, rank, settings.failure_file, checkpoints)
                return
            epoch = (step - 1) // plan.steps_per_epoch
            metrics.update(
                step=step, epoch=epoch, images_per_s=steps * config.optim.batch_size / elapsed,
                train_minutes=trainer.train_seconds / 60,
            )  # fmt: skip
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
            report(trainer, metrics, save, last, rank, info, checkpoints)
            window_start = time.perf_counter()
    finally:
        reader.close()
    check_ranks_agree(trainer.model, world)
    logger.final_model(trainer, checkpoint_extra(trainer, info))


def report_failure(
    error: NonFiniteLossError, step: int, rank: int, failure_file: str | None, checkpoints: BackgroundCheckpoints
) -> None:
    """End this worker's loop after a deterministic failure without raising, so that Ray Train does not
    retry it (a retry would meet the same NaN): rank 0 records it for the driver to raise
    (``raise_recorded_failure``), so that the job prints it once; every rank reports (a collective), rank 0
    with the checkpoint still being written, if any (it passed its step's check), so the last good
    checkpoint stays the newest."""
    if rank == 0 and failure_file is not None:
        record_failure(failure_file, error)
    elif rank == 0:
        log.error("%s", error)
    _report({"step": step, "failed_step": error.step}, checkpoints.ready(wait=True) if rank == 0 else None)


def checkpoint_extra(trainer: Trainer, info: DatasetInfo) -> dict[str, Any]:
    """What a run's checkpoints (and its MLflow model) add to state.json: the config, eta, colour and stats."""
    return {"config": trainer.config.to_dict(), "eta": info.eta, "colour": info.colour, "stats": info.stats}


def report(
    trainer: Trainer,
    metrics: dict[str, float],
    save: bool,
    last: bool,
    rank: int,
    info: DatasetInfo,
    checkpoints: BackgroundCheckpoints,
) -> None:
    """ray.train.report from every worker (a collective); rank 0 attaches the newest checkpoint its
    background writer has finished.

    At a save step rank 0 snapshots the state and starts writing it (``BackgroundCheckpoints.start``: it
    waits for the previous write first); the ranks go on training while it is written, and it is attached
    to the first report after it is complete (the last step's is waited for, so the loop ends with it
    reported). Ray Train uploads the local folder in the background (``CheckpointUploadMode.ASYNC``) and
    deletes it afterwards; it registers a checkpoint only once its upload is complete, and the manifest
    is its last file, so a resume never sees a partial one."""
    directory = None
    if rank == 0:
        if save:
            checkpoints.start(*trainer.checkpoint_contents(checkpoint_extra(trainer, info)))
        directory = checkpoints.ready(wait=last)
    _report(metrics, directory)


def _report(metrics: dict[str, float], directory: str | None) -> None:
    """ray.train.report of ``metrics``, with the complete checkpoint in ``directory`` if given (uploaded in
    the background, then deleted)."""
    import ray.train

    if directory is None:
        ray.train.report(metrics)
        return
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(directory),
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        delete_local_checkpoint_after_upload=True,
    )
