"""Train a DCTdiff (or pixel-baseline) U-ViT with Ray Train, tracked in MLflow.

    python pipelines/train.py --preset demo --data outputs/demo-data
    ray job submit --working-dir . -- python pipelines/train.py --preset cifar10 --data s3://bucket/cifar10 \
        --workers 8 --gpus-per-worker 1 --storage s3://bucket/runs --mlflow-uri http://mlflow:5000

The data is a ``pipelines/prepare.py`` output (Parquet coefficient shards + stats.json). The run's
checkpoints go to ``--storage``/``--name``; ``--resume`` continues the newest checkpoint of a run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from dctdiff import storage
from dctdiff.codec import DCTCodec
from dctdiff.config import ConfigError, TrainConfig, build_config, check_run_name, config_from_dict, positive_int
from dctdiff.data import DatasetInfo, load_dataset_info
from dctdiff.generate import generate_images
from dctdiff.grid import image_grid
from dctdiff.periodic_fid import ensure_reference_stats, load_reference, sample_fid
from dctdiff.ray_utils import DATA_CPUS, ResourceError, init_ray, plan_worker_cpus
from dctdiff.tracking import get_or_create_experiment, open_tracking, redact, resolve_tracking_uri, ui_command
from dctdiff.training import Batch, Trainer, build_codec, build_model

RUN_FILE = "dctdiff_run.json"  # in <storage>/<name>/: the MLflow run id and the resolved config
MATERIALIZE_BYTES = 512 * 2**20  # datasets up to this size are read once into the object store


@dataclass
class LaunchOptions:
    """How and where to run; the model/data/optimiser settings live in TrainConfig."""

    data: str
    workers: int = 1
    cpus_per_worker: float | None = None  # None: fit the cluster, leaving a CPU for Ray Data
    gpus_per_worker: float = 0.0
    placement_strategy: str = "PACK"  # SPREAD puts one worker per node
    storage: str = "outputs/runs"
    name: str | None = None
    resume: bool = False
    max_failures: int = 2
    mlflow_uri: str | None = None
    experiment: str = "dctdiff"
    address: str | None = None
    # set by tune/sweep.py: the run is a Tune trial; a restored trial continues its own run (checkpoints
    # and MLflow run, a child of the sweep's run through extra_tags["mlflow.parentRunId"]), which the
    # sweep ends
    tune: bool = False
    extra_tags: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The training loop: runs on every Ray Train worker.
# --------------------------------------------------------------------------------------------------


def _batch_from_rows(rows: dict[str, np.ndarray], config: TrainConfig, codec, pixel_source) -> Batch:
    """A Ray Data numpy batch of shard rows -> clean tokens for the codec being trained."""
    coefficients = torch.from_numpy(np.array(rows["coefficients"]))  # [n, L, 6, B^2] (a writable copy)
    if pixel_source is None:
        tokens = codec.tokens_from_coefficients(coefficients)  # keep m, divide by eta (load time, §3)
    else:  # pixel baseline: images decoded from all B^2 coefficients, then pixel patches
        images = pixel_source.decode(pixel_source.tokens_from_coefficients(coefficients))
        tokens = codec.encode(images)
    labels = torch.from_numpy(rows["label"].astype(np.int64)) if config.data.class_conditional else None
    return Batch(tokens, labels, [str(i) for i in rows["id"]])


def _reduce_mean(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Average scalar metrics over workers (each saw its share of the global batch)."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: v / world_size for k, v in zip(keys, tensor.tolist())}


def train_loop_per_worker(loop_config: dict[str, Any]) -> Trainer:
    """Ray Train worker: restore the newest checkpoint if any, train to max_steps, report and log.

    Returns the Trainer (Ray ignores it; callers that wrap this loop can inspect the final state).
    """
    import ray.train
    import ray.train.torch

    config = config_from_dict(loop_config["config"])
    info: DatasetInfo = loop_config["info"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()
    codec = build_codec(config, info.eta)
    torch.manual_seed(config.schedule.seed)  # same initial weights for any worker count (DDP broadcasts rank 0's)
    pixel_source = DCTCodec(info.resolution, info.block_size, info.block_size**2) if config.data.space == "pixel" else None
    trainer = Trainer(
        config, codec, build_model(config, codec), info.entropy, device, wrap=ray.train.torch.prepare_model
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(directory)
    logger = _RankZeroLogger(loop_config["mlflow"], rank)
    reference = load_reference(loop_config["fid_reference"]) if loop_config["fid_reference"] else None

    s = config.schedule
    per_worker = config.optim.batch_size // world
    steps_per_epoch = (info.rows // world) // per_worker
    shard = ray.train.get_dataset_shard("train")
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    while trainer.step < s.max_steps:
        epoch, skip = divmod(trainer.step, steps_per_epoch)
        batches = shard.iter_batches(
            batch_size=per_worker,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * per_worker,
            local_shuffle_seed=s.seed + epoch,
        )
        for index, rows in enumerate(batches):
            if index < skip:  # resumed mid-epoch: these batches were trained on before the checkpoint
                continue
            if index >= steps_per_epoch or trainer.step >= s.max_steps:
                break
            window.append(trainer.train_step(_batch_from_rows(rows, config, codec, pixel_source)))
            step = trainer.step
            last = step == s.max_steps
            save = step % s.checkpoint_every == 0 or last
            grid = s.sample_every > 0 and (step % s.sample_every == 0 or last)
            fid = s.fid_every > 0 and (step % s.fid_every == 0 or last)
            if step % s.log_every and not (save or grid or fid):
                continue
            elapsed = time.perf_counter() - window_start
            metrics = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            metrics = _reduce_mean(metrics, world)
            metrics.update(step=step, epoch=epoch, images_per_s=len(window) * config.optim.batch_size / elapsed)
            if fid:  # every rank samples its share of the seeds (a collective)
                metrics["fid"] = sample_fid(
                    trainer.ema, codec, trainer.schedule, reference, s.fid_samples, s.sampler, s.sample_nfe,
                    device=device, rank=rank, world=world,
                )  # fmt: skip
            if rank == 0:
                print(
                    f"step {step}/{s.max_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                    f"{metrics['images_per_s']:.1f} img/s" + (f" FID {metrics['fid']:.2f}" if fid else ""),
                    flush=True,
                )
            logger.metrics(metrics, step)
            if grid:
                logger.sample_grid(trainer, step)
            _report(trainer, metrics, save, rank, config, info)
            window, window_start = [], time.perf_counter()
    logger.final_weights(trainer)
    return trainer


def _report(trainer: Trainer, metrics: dict[str, float], save: bool, rank: int, config: TrainConfig, info) -> None:
    """ray.train.report from every worker (a collective); rank 0 attaches the checkpoint."""
    import ray.train

    if not (save and rank == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        trainer.save(directory, {"config": config.to_dict(), "eta": info.eta, "stats": info.stats})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


class _RankZeroLogger:
    """MLflow logging from the rank-0 worker into the run the driver created."""

    def __init__(self, mlflow_settings: dict[str, str] | None, rank: int) -> None:
        self.active = mlflow_settings is not None and rank == 0
        if self.active:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(mlflow_settings["tracking_uri"])
            self.run_id = mlflow_settings["run_id"]

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k.replace("band/", "loss_"), float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=entries)

    def sample_grid(self, trainer: Trainer, step: int) -> None:
        """Decode EMA samples (fixed seeds, so grids are comparable across steps) and log the PNG."""
        if not self.active:
            return
        s = trainer.config.schedule
        images = generate_images(
            trainer.ema, trainer.codec, trainer.schedule, list(range(s.sample_count)), s.sampler, s.sample_nfe,
            device=trainer.device,
        ).numpy()  # fmt: skip
        side = max(1, math.isqrt(len(images)))
        rows = [images[i : i + side] for i in range(0, len(images), side)]
        self.client.log_image(self.run_id, image_grid(rows), artifact_file=f"samples/step_{step:07d}.png")

    def final_weights(self, trainer: Trainer) -> None:
        if not self.active:
            return
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "ema.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in trainer.ema.state_dict().items()}, str(path))
            self.client.log_artifact(self.run_id, str(path), artifact_path="model")


# --------------------------------------------------------------------------------------------------
# The driver: resolve the config, check data and resources, start MLflow and Ray Train.
# --------------------------------------------------------------------------------------------------


def _run_name(options: LaunchOptions, config: TrainConfig) -> str:
    if options.name:
        return options.name
    if options.resume:
        runs = [
            e
            for e in (storage.list_files(options.storage) if storage.is_dir(options.storage) else [])
            if e.relative.count("/") == 1 and e.relative.endswith("/" + RUN_FILE)
        ]
        if not runs:
            raise FileNotFoundError(f"--resume: no runs under {options.storage}; give --storage and --name of the run")
        return max(runs, key=lambda e: e.mtime).relative.split("/")[0]
    return f"{config.preset}-{config.data.space}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_resume(run_file: str, config: TrainConfig, options: LaunchOptions) -> dict[str, Any]:
    """Previous run record; the config must match except schedule.max_steps (which may grow)."""
    exists = storage.exists(run_file)
    if options.resume and not exists:
        raise FileNotFoundError(f"--resume: {run_file} does not exist; check --storage and --name")
    if not options.resume and exists:
        raise FileExistsError(
            f"run {options.name!r} already exists under {options.storage}; pass --resume to continue it "
            "or choose another --name"
        )
    if not exists:
        return {}
    record = storage.read_json(run_file)
    previous = dict(record["config"])
    previous["schedule"] = {**previous["schedule"], "max_steps": config.schedule.max_steps}
    if previous != config.to_dict():
        changed = [
            f"{section}.{k}"
            for section, values in config.to_dict().items()
            if isinstance(values, dict)
            for k, v in values.items()
            if previous.get(section, {}).get(k) != v
        ]
        raise ConfigError(
            f"--resume with a different config ({', '.join(changed)}); resume with the saved settings "
            "(only schedule.max_steps may change) or start a new run"
        )
    return record


def launch(
    config: TrainConfig,
    options: LaunchOptions,
    run_config_overrides: dict[str, Any] | None = None,
    loop=train_loop_per_worker,
):
    """Run one training job on the current Ray cluster; returns (ray.train Result, MLflow run id).

    ``loop`` is the per-worker function (default ``train_loop_per_worker``; wrappers of it may add work).
    """
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    info = load_dataset_info(options.data, config)
    if info.rows < config.optim.batch_size:
        raise ValueError(
            f"{options.data} has {info.rows} images, fewer than one global batch (optim.batch_size="
            f"{config.optim.batch_size}); lower the batch size or prepare more images"
        )
    if config.optim.batch_size % options.workers:
        raise ConfigError(
            f"optim.batch_size {config.optim.batch_size} must be divisible by --workers {options.workers}"
        )
    init_ray(options.address)
    resources = ray.cluster_resources()
    cpus = plan_worker_cpus(
        options.workers, resources.get("CPU", 0.0), resources.get("GPU", 0.0),
        options.cpus_per_worker, options.gpus_per_worker,
    )  # fmt: skip

    storage_uri = storage.normalize(options.storage)
    name = _run_name(options, config)
    options.name = name
    run_file = storage.join(storage_uri, name, RUN_FILE)
    if options.tune:  # a trial that Tuner.restore restarts continues its checkpoints and MLflow run
        options.resume = storage.exists(run_file)
    record = _check_resume(run_file, config, options)
    fid_reference = ensure_reference_stats(options.data, info.rows) if config.schedule.fid_every else None
    materialize = info.rows * info.row_bytes <= MATERIALIZE_BYTES  # small data: read once, not every epoch
    # With the data in memory, Ray Data's CPU is idle during training: the workers share it as threads.
    threads = max(1, int(cpus + (DATA_CPUS / options.workers if materialize else 0.0)))
    mlflow_settings = _start_mlflow_run(config, options, info, record.get("mlflow_run_id"), threads)
    storage.write_json(run_file, {"config": config.to_dict(), "mlflow_run_id": mlflow_settings["run_id"]})

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the workers print training progress
    context.execution_options.preserve_order = True  # materialize() keeps file order: same batches on a re-run
    dataset = ray.data.read_parquet(info.shards_uri).select_columns(["id", "label", "coefficients"])
    if materialize:
        dataset = dataset.materialize()
    execution = ray.data.ExecutionOptions(preserve_order=True)  # same batches on a re-run (exact resume)

    def entry(loop_config: dict[str, Any]) -> None:
        loop(loop_config)  # not its return value: Ray sends that to the controller, where a DDP model cannot unpickle

    trainer = TorchTrainer(
        entry,
        train_loop_config={
            "config": config.to_dict(),
            "info": info,
            "threads": threads,
            "mlflow": mlflow_settings,
            "fid_reference": fid_reference,
        },
        torch_config=TorchConfig(backend="nccl" if options.gpus_per_worker > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=options.workers,
            use_gpu=options.gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": options.gpus_per_worker} if options.gpus_per_worker else {})},
            placement_strategy=options.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_uri,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.schedule.keep_checkpoints),
            **(run_config_overrides or {}),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=execution),
    )
    status = "FAILED"
    try:
        result = trainer.fit()
        status = "FINISHED"
    finally:
        if not options.tune:  # a sweep ends its trials' runs: Tune decides when a trial ends (ASHA stops some)
            _end_mlflow_run(mlflow_settings, status)
    return result, mlflow_settings["run_id"]


def _start_mlflow_run(
    config: TrainConfig, options: LaunchOptions, info: DatasetInfo, run_id: str | None, worker_threads: int
) -> dict:
    """Create (or reopen, on resume) the job's MLflow run in the driver; log params and artifacts."""
    from mlflow.tracking import MlflowClient

    tracking_uri = resolve_tracking_uri(options.mlflow_uri)
    client = MlflowClient(tracking_uri)
    if run_id is None:
        experiment_id = get_or_create_experiment(tracking_uri, options.experiment)
        tags = {"mlflow.runName": options.name, "dctdiff.data": redact(options.data), **options.extra_tags}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        params = {k: str(v) for k, v in config.flat().items()}
        params.update({"data.eta_used": str(info.eta), "data.rows": str(info.rows), "workers": str(options.workers),
                       "worker_threads": str(worker_threads)})  # fmt: skip
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_text(run_id, config.to_yaml(), "config.yaml")
        client.log_dict(run_id, info.stats, "stats.json")
    else:
        client.update_run(run_id, status="RUNNING")
    return {"tracking_uri": tracking_uri, "run_id": run_id}


def _end_mlflow_run(settings: dict[str, str], status: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(settings["tracking_uri"]).set_terminated(settings["run_id"], status=status)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, LaunchOptions, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="paper preset: demo, cifar10, celeba64, imagenet64, ffhq128, ...")
    parser.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML overrides (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set optim.lr=1e-4")
    parser.add_argument("--data", help="a pipelines/prepare.py output folder or URI")
    parser.add_argument("--space", choices=["dct", "pixel"], help="dct (DCTdiff) or pixel (the U-ViT baseline)")
    parser.add_argument("--max-steps", type=int, help="shorthand for --set schedule.max_steps=N")
    parser.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (one per GPU on GPU clusters)")
    parser.add_argument("--cpus-per-worker", type=float, help="default: fit the cluster, keeping 1 CPU for Ray Data")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--placement", choices=["PACK", "SPREAD"], default="PACK", help="SPREAD: one worker per node")
    parser.add_argument("--storage", default=os.environ.get("DCTDIFF_STORAGE", "outputs/runs"), help="checkpoint root (path or URI)")
    parser.add_argument("--name", help="run name (default: preset-space-timestamp)")
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint of --name (default: newest run)")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="dctdiff", help="MLflow experiment name")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.space:
        overrides.append(f"data.space={args.space}")
    if args.max_steps is not None:
        overrides.append(f"schedule.max_steps={args.max_steps}")
    config = build_config(args.preset, args.config, overrides)
    if not args.dry_run and not args.data:
        parser.error("--data is required (a pipelines/prepare.py output)")
    options = LaunchOptions(
        data=args.data or "",
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        placement_strategy=args.placement,
        storage=args.storage,
        name=check_run_name(args.name),
        resume=args.resume,
        max_failures=args.max_failures,
        mlflow_uri=args.mlflow_uri,
        experiment=args.experiment,
        address=args.address,
    )
    return config, options, args.dry_run


def main(argv: list[str] | None = None) -> int:
    try:
        config, options, dry_run = parse_args(argv)
        if dry_run:
            print(config.to_yaml(), end="")
            return 0
        open_tracking(options.mlflow_uri)
        result, run_id = launch(config, options)
    except (ConfigError, ResourceError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    metrics = result.metrics or {}
    print(
        f"done: step {metrics.get('step')} loss {metrics.get('loss', float('nan')):.4f}; "
        f"checkpoint {result.checkpoint.path if result.checkpoint else None}"
    )
    tracking_uri = resolve_tracking_uri(options.mlflow_uri)
    print(f"MLflow run {run_id} in {redact(tracking_uri)}\nreview it with: {ui_command(tracking_uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
