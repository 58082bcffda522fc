"""Start one training job on a Ray cluster: check the data and the resume state, plan the workers'
resources, then run ``worker_loop.train_loop_per_worker`` under a Ray Train ``TorchTrainer``.

The caller owns the MLflow run: ``train`` (the ``dctdiff train`` job) opens and ends it; a sweep opens
and ends its trials' runs. ``launch`` only logs into the run it is given.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from dctdiff.infra import storage
from dctdiff.infra.mlflow_runs import RunHandle, create_run
from dctdiff.infra.mlflow_tracking import TrackingOptions, redact, resolve_tracking_uri
from dctdiff.infra.ray_cluster import ends_on_lost_cluster, init_ray, plan_worker_cpus, torch_config, training_threads
from dctdiff.models.checkpoints import checkpoint_folders, newest_intact
from dctdiff.models.config import ConfigError, TrainConfig, split_batch
from dctdiff.training.dataset_info import DatasetInfo, load_dataset_info
from dctdiff.training.failure_record import FAILURE_FILE, clear_failure, raise_recorded_failure
from dctdiff.training.periodic_fid import check_reference_rows, ensure_reference_stats
from dctdiff.training.run_record import log_dataset_input, run_params, system_metrics
from dctdiff.training.worker_loop import LoopSettings, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_FILE = "dctdiff_run.json"  # in <storage>/<name>/: the MLflow run id and the resolved config


@dataclass(frozen=True)
class WorkerResources:
    """The Ray Train worker group of one run (a sweep gives every trial the same)."""

    workers: int = 1
    cpus_per_worker: float | None = None  # None: fit the cluster, leaving a CPU for Ray Data
    gpus_per_worker: float = 0.0
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    placement_strategy: str = "PACK"  # SPREAD puts one worker per node


@dataclass(frozen=True)
class LaunchOptions:
    """How and where to run; the model/data/optimiser settings live in TrainConfig."""

    data: str
    resources: WorkerResources = WorkerResources()
    storage: str = "outputs/runs"
    name: str | None = None
    resume: bool = False
    address: str | None = None
    log_level: str = "INFO"
    fid_reference: str | None = None  # the prepare output FID/KID compare with (None: the training images of data)


@dataclass(frozen=True)
class RunPlan:
    """A checked training run, resolved in the driver before Ray starts."""

    config: TrainConfig
    options: LaunchOptions
    name: str  # the run's folder under the storage root
    run_file: str  # <storage>/<name>/dctdiff_run.json
    info: DatasetInfo
    reference: DatasetInfo  # of options.fid_reference, else info: the images FID/KID compare with
    previous_run_id: str | None  # the MLflow run of the checkpoints being resumed, if any
    resume_from: str | None = None  # the newest intact checkpoint of the resumed run (None: start at step 0)
    planned_checkpoints: tuple[str, ...] = ()  # the run's checkpoint folder names when resume_from was chosen


def _newest_run(storage_root: str) -> str:
    """Name of the run under ``storage_root`` whose run file changed last (``--resume`` without ``--name``)."""
    runs = [
        e
        for e in (storage.list_files(storage_root) if storage.is_dir(storage_root) else [])
        if e.relative.count("/") == 1 and e.relative.endswith("/" + RUN_FILE)
    ]
    if not runs:
        raise FileNotFoundError(f"--resume: no runs under {storage_root}; give --storage and --name of the run")
    return max(runs, key=lambda e: e.mtime).relative.split("/")[0]


def _changed_keys(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{section}.{k}"
        for section, values in current.items()
        if isinstance(values, dict)
        for k, v in values.items()
        if previous.get(section, {}).get(k) != v
    ]


def _previous_run_id(run_file: str, config: TrainConfig, resume: bool, name: str, storage_root: str) -> str | None:
    """The MLflow run id recorded for the run being resumed; the config must match except cadence.max_steps."""
    exists = storage.exists(run_file)
    if resume and not exists:
        raise FileNotFoundError(f"--resume: {run_file} does not exist; check --storage and --name")
    if not resume and exists:
        raise FileExistsError(
            f"run {name!r} already exists under {storage_root}; pass --resume to continue it or choose another --name"
        )
    if not exists:
        return None
    record = storage.read_json(run_file)
    previous = dict(record["config"])
    previous["cadence"] = {**previous.get("cadence", {}), "max_steps": config.cadence.max_steps}
    if previous != config.to_dict():
        raise ConfigError(
            f"--resume with a different config ({', '.join(_changed_keys(previous, config.to_dict()))}); resume with "
            "the saved settings (only cadence.max_steps may change) or start a new run"
        )
    return record["mlflow_run_id"]


def plan_run(config: TrainConfig, options: LaunchOptions, continue_existing: bool = False) -> RunPlan:
    """Check the data, the run name and the resume state; nothing starts.

    A resumed run continues from its newest intact checkpoint (a corrupt newer one is skipped with a
    warning); CorruptCheckpointError if it has checkpoints and none is intact.

    ``continue_existing``: resume the run if it exists, else start it (a Tune trial that Tuner.restore
    restarts); otherwise ``options.resume`` decides, and a mismatch is an error.
    """
    split_batch(config.optim.batch_size, options.resources.workers, config.optim.micro_batches)
    info = load_dataset_info(options.data, config)
    if info.rows < config.optim.batch_size:
        raise ValueError(
            f"{options.data} has {info.rows} images, fewer than one global batch (optim.batch_size="
            f"{config.optim.batch_size}); lower the batch size or prepare more images"
        )
    reference = (
        load_dataset_info(options.fid_reference, config, "--fid-reference", reads_tokens=False)
        if options.fid_reference
        else info
    )
    if config.cadence.fid_every:
        check_reference_rows(
            reference.rows,
            f"images in --fid-reference {options.fid_reference}" if options.fid_reference else "training images",
        )
    root = storage.normalize(options.storage)
    if options.name:
        name = options.name
    elif options.resume:
        name = _newest_run(root)
    else:
        name = f"{config.preset}-{config.data.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_file = storage.join(root, name, RUN_FILE)
    resume = storage.exists(run_file) if continue_existing else options.resume
    previous = _previous_run_id(run_file, config, resume, name, root)
    folders = checkpoint_folders(storage.join(root, name)) if resume else []
    return RunPlan(
        config, options, name, run_file, info, reference, previous, newest_intact(folders),
        tuple(posixpath.basename(folder) for folder in folders),
    )  # fmt: skip


def launch(plan: RunPlan, run: RunHandle | None, callbacks: tuple[Any, ...] = ()):
    """Run the planned job on the current Ray cluster (started unless connected); returns the ray.train Result.

    ``run``: the open MLflow run rank 0 logs into (None: no tracking); ``callbacks``: Ray Train callbacks
    (a sweep passes Tune's report callback).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from dctdiff.training.no_retry import StopOnRecordedFailure

    config, options, info, group = plan.config, plan.options, plan.info, plan.options.resources
    init_ray(options.address)
    cluster = ray.cluster_resources()
    cpus = plan_worker_cpus(
        group.workers, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0), group.cpus_per_worker, group.gpus_per_worker
    )
    fid_reference = None
    if config.cadence.fid_every:
        fid_reference = ensure_reference_stats(
            options.fid_reference or options.data, plan.reference.rows, config.cadence.sample_precision
        )
    # The workers read the shards themselves (batch_order); Ray Data's reserved CPU is idle during training,
    # so the workers share it as threads.
    threads = training_threads(cpus, group.workers)
    if run is not None:
        run.log_params({"workers": group.workers, "worker_threads": threads})
    storage.write_json(plan.run_file, {"config": config.to_dict(), "mlflow_run_id": run.run_id if run else None})

    failure_file = storage.join(storage.normalize(options.storage), plan.name, FAILURE_FILE)
    clear_failure(failure_file)
    settings = LoopSettings(
        config.to_dict(), info, threads, run, fid_reference, options.log_level, plan.resume_from,
        plan.planned_checkpoints, failure_file,
    )  # fmt: skip
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings,
        torch_config=torch_config("nccl" if group.gpus_per_worker > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=group.workers,
            use_gpu=group.gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": group.gpus_per_worker} if group.gpus_per_worker else {})},
            placement_strategy=group.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=plan.name,
            storage_path=storage.normalize(options.storage),
            failure_config=ray.train.FailureConfig(max_failures=group.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.cadence.keep_checkpoints),
            callbacks=[*callbacks, StopOnRecordedFailure(failure_file)],
        ),
    )
    with system_metrics(run):
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError:
            raise_recorded_failure(failure_file)  # a first-step exception: stopped by StopOnRecordedFailure
            raise
    raise_recorded_failure(failure_file)  # a NaN/inf loss: the workers stopped together, without a retry
    return result


def open_run(plan: RunPlan, tracking: TrackingOptions, tags: dict[str, str] | None = None) -> tuple[RunHandle, str]:
    """Create the run's MLflow run, or reopen the resumed run's; returns it and its status before."""
    tracking_uri = resolve_tracking_uri(tracking.uri)
    if plan.previous_run_id is not None:
        run = RunHandle(tracking_uri, plan.previous_run_id)
        return run, run.reopen()
    run = create_run(
        tracking_uri, tracking.experiment, plan.name, {"dctdiff.data": redact(plan.options.data), "dctdiff.fid_reference": redact(plan.options.fid_reference or plan.options.data), **(tags or {})},
        run_params(plan.config, plan.info, plan.options.resources.gpus_per_worker),
    )  # fmt: skip
    run.log_text(plan.config.resolved(plan.info.eta, plan.info.colour).to_yaml(), "config.yaml")
    run.log_dict(plan.info.stats, "stats.json")
    log_dataset_input(run, plan.options.data, plan.info)
    return run, "RUNNING"


def close_run(run: RunHandle, succeeded: bool, previous_status: str) -> None:
    """End the run: FINISHED, or FAILED, except that a failed attempt never un-finishes a finished run."""
    run.end("FINISHED" if succeeded or previous_status == "FINISHED" else "FAILED")


@ends_on_lost_cluster
def train(config: TrainConfig, options: LaunchOptions, tracking: TrackingOptions) -> tuple[Any, str]:
    """The ``dctdiff train`` job: plan, open the MLflow run, train, end the run; returns (Result, run id)."""
    plan = plan_run(config, options)
    run, previous_status = open_run(plan, tracking)
    succeeded = False
    try:
        result = launch(plan, run)
        succeeded = True
    finally:
        close_run(run, succeeded, previous_status)
    return result, run.run_id
