"""Ray Tune sweeps over the DCTdiff training pipeline, ranked by FID and tracked in MLflow.

Every trial is one training run (``dctdiff.training.train_job``: its ``plan_run`` and ``launch``: the same Ray Train loop, data path,
checkpoints and MLflow logging) inside a Tune function trainable, the pattern Ray 2.60 recommends for
tuning Ray Train (docs/ARCHITECTURE.md, "Sweeps"). Every report carries the FID and KID of ``--fid-samples`` EMA samples
at ``--nfe`` against the training set's features; trials are ranked, and stopped early by ASHA, on the FID. The training
loss is not the objective: with another SNR scale c the loss averages over another distribution of noise
levels, and EBFR changes its weights, so loss values of different trials do not measure the same thing.

MLflow: a parent run for the sweep, one child run per trial (params, metrics over steps, sample grids,
tag ``mlflow.parentRunId``); at the end the result table (``results.csv``) and the best trial's config
(``best_config.yaml``, ready for ``dctdiff train --config``) and the study report (``study.md``,
``study_curves.png``: arms over seeds, ``dctdiff.tuning.study_report``) go to the parent run and to
``<storage>/<name>/``. ``--resume`` continues an interrupted sweep (Tuner.restore): finished trials are
kept, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ray.tune import Callback

from dctdiff.core.kid import MIN_FEATURES
from dctdiff.infra import storage
from dctdiff.infra.mlflow_runs import PARENT_TAG, RUN_NAME_TAG, RunHandle, create_run
from dctdiff.infra.mlflow_tracking import TrackingOptions, redact, resolve_tracking_uri, review_hint
from dctdiff.infra.ray_cluster import DATA_CPUS, ResourceError, ends_on_lost_cluster, init_ray
from dctdiff.models.config import ConfigError, TrainConfig, build_config, config_from_dict
from dctdiff.training.dataset_info import load_dataset_info
from dctdiff.training.periodic_fid import ensure_reference_stats
from dctdiff.training.train_job import LaunchOptions, WorkerResources, launch, open_run, plan_run
from dctdiff.tuning.search_space import (
    DEFAULT_SCHEDULER,
    grid_size,
    is_pure_grid,
    key_values,
    load_study,
    tune_param_space,
    validate_space,
    with_values,
)  # fmt: skip
from dctdiff.tuning.study_report import write_study_report
from dctdiff.tuning.sweep_report import (
    STOPPED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TrialRow,
    best_config_yaml,
    child_runs,
    format_table,
    rows_csv,
    trial_rows,
)  # fmt: skip

SWEEP_FILE = "dctdiff_sweep.json"  # in <storage>/<name>/: the plan, so --resume needs only the name
TRIALS_DIR = "trials"  # <storage>/<name>/trials/<trial id>/: each trial's Ray Train run (checkpoints)
RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_CPUS = 0.01  # the trial's Tune actor only drives its Ray Train run; the workers hold the real CPUs
INTERRUPTED = 130

log = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """Everything a sweep (and its --resume) needs; saved as JSON in the sweep's folder."""

    name: str
    storage: str  # normalized root; the sweep lives in <storage>/<name>
    data: str  # normalized prepare output
    base: dict[str, Any]  # resolved config (preset + --config + --set) the best values are applied to
    study: str
    space: dict[str, Any]
    scheduler: str  # "asha" or "grid"
    num_samples: int
    max_steps: int
    report_every: int
    fid_samples: int
    nfe: int
    grace_steps: int
    reduction_factor: float
    resources: WorkerResources
    max_concurrent: int | None
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""
    log_level: str = "INFO"
    description: str = ""  # the study's
    fid_reference: str = ""  # normalized prepare output FID/KID compare with ("": the training images of data)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "SweepPlan":
        """The plan that ``asdict`` saved."""
        return cls(**{**values, "resources": WorkerResources(**values["resources"])})

    @property
    def directory(self) -> str:
        return storage.join(self.storage, self.name)

    def base_config(self) -> TrainConfig:
        return config_from_dict(self.base)


def trial_config(plan: SweepPlan, values: dict[str, Any]) -> TrainConfig:
    """A trial's training config: the base config, the trial's values, and the sweep's cadence (one
    report, FID, checkpoint and sample grid every ``report_every`` steps, so every Tune result has an FID)."""
    every = plan.report_every
    cadence = {
        "cadence.max_steps": plan.max_steps,
        **{f"cadence.{k}": every for k in ("log_every", "fid_every", "checkpoint_every", "sample_every")},
        "cadence.fid_samples": plan.fid_samples,
        "cadence.sample_nfe": plan.nfe,
    }
    return with_values(plan.base_config(), {**values, **cadence})


def plan_concurrency(
    cluster_cpus: float,
    cluster_gpus: float,
    workers: int,
    cpus_per_worker: float | None,
    gpus_per_worker: float,
    requested: int | None,
) -> tuple[float, int]:
    """(CPUs per training worker, trials at once) such that the running trials' actors and workers plus
    DATA_CPUS for Ray Data fit the cluster; trials beyond that queue in Tune.

    Raises ResourceError, saying what to change, when not even one trial fits or ``requested`` trials do not.
    """
    if workers < 1 or (requested is not None and requested < 1):
        raise ResourceError(f"--workers and --max-concurrent-trials must be >= 1, got {workers} and {requested}")
    cpus = cpus_per_worker
    if cpus is None:  # up to one CPU per worker, one trial fitting at least
        cpus = min(1.0, (cluster_cpus - DATA_CPUS - TRIAL_CPUS) / workers)
    per_trial = TRIAL_CPUS + workers * cpus
    fit = math.floor((cluster_cpus - DATA_CPUS) / per_trial + 1e-9) if cpus > 0 else 0
    if gpus_per_worker > 0:
        fit = min(fit, math.floor(cluster_gpus / (workers * gpus_per_worker) + 1e-9))
    need = (
        f"one trial needs {TRIAL_CPUS:g} CPU for its Tune actor + {workers} worker(s) x {max(cpus, 0):.3g} CPU"
        + (f" and {workers} x {gpus_per_worker:g} GPU" if gpus_per_worker else "")
        + f", and Ray Data needs {DATA_CPUS:g} CPU beside all running trials to read the shards"
    )  # fmt: skip
    if fit < 1:
        raise ResourceError(
            f"{need}; the cluster has {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs, so no trial fits and the "
            "sweep would wait forever. Lower --workers, --cpus-per-worker or --gpus-per-worker, or add nodes."
        )
    if requested is not None and requested > fit:
        raise ResourceError(
            f"--max-concurrent-trials {requested}: {need}; the cluster ({cluster_cpus:g} CPUs, {cluster_gpus:g} "
            f"GPUs) holds {fit} trial(s) at once. More would take the CPU Ray Data reads with and training would "
            f"hang. Use --max-concurrent-trials {fit} or less (the other trials queue)."
        )
    return cpus, requested or fit


def trial_name(trial: Any) -> str:
    """Tune trial (and directory) name: the trial id, which also names its Ray Train run and MLflow tag."""
    return trial.trial_id


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_label(values: dict[str, Any]) -> str:
    """A trial's swept values, short: ``seed=0 space=dct`` (its MLflow run name and log lines)."""
    return " ".join(f"{key.rpartition('.')[2]}={_short(value)}" for key, value in sorted(values.items()))


def run_trial(values: dict[str, Any], plan: SweepPlan) -> None:
    """Tune function trainable: one Ray Train run of `dctdiff train` with the trial's values.

    Ray Train reports reach Tune through TuneReportCallback; rank 0 logs to the trial's MLflow run, a
    child of the sweep's run. A trial that Tuner.restore restarts continues its checkpoints and run.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = tune.get_context().get_trial_id()
    label = trial_label(values)
    options = LaunchOptions(
        data=plan.data, resources=plan.resources, storage=storage.join(plan.directory, TRIALS_DIR), name=trial,
        log_level=plan.log_level, fid_reference=plan.fid_reference or None,
    )  # fmt: skip
    trial_plan = plan_run(trial_config(plan, values), options, continue_existing=True)
    tags = {PARENT_TAG: plan.parent_run_id, SWEEP_TAG: plan.name, TRIAL_TAG: trial, RUN_NAME_TAG: f"{trial} {label}",
            "mlflow.source.name": "dctdiff sweep"}  # fmt: skip
    run, _ = open_run(trial_plan, TrackingOptions(plan.tracking_uri, plan.experiment), tags)  # ended by ChildRunCloser
    launch(trial_plan, run, callbacks=(TuneReportCallback(),))


def _end_child_run(plan: SweepPlan, trial_id: str, status: str, stopped_early: bool = False) -> None:
    """End a trial's MLflow run if it is RUNNING: the sweep, not launch, ends its trials' runs."""
    run = child_runs(plan.tracking_uri, plan.parent_run_id).get(trial_id)
    if run is None or run.info.status != "RUNNING":
        return
    child = RunHandle(plan.tracking_uri, run.info.run_id)
    if stopped_early:
        child.set_tags({STOPPED_TAG: "true"})
    child.end(status)


class ChildRunCloser(Callback):
    """Ends the MLflow run of every trial when Tune ends the trial (finished, stopped by ASHA or failed)."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        stopped = int(trial.last_result.get("step", 0)) < self.plan.max_steps
        _end_child_run(self.plan, trial.trial_id, "FINISHED", stopped_early=stopped)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        _end_child_run(self.plan, trial.trial_id, "FAILED")


class TrialProgress(Callback):
    """One log line when a trial starts and one when it ends, in place of Tune's status table, which it
    prints every 30 s (1,000 lines in an hour-long study); the workers' step lines come in between."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        log.info("trial %s (%s) started", trial.trial_id, trial_label(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        result = trial.last_result or {}
        log.info(
            "trial %s (%s) ended at step %s: FID %.4g, KID %.4g, %.0f s", trial.trial_id, trial_label(trial.config),
            result.get("step"), result.get("fid", float("nan")), result.get("kid", float("nan")),
            result.get("time_total_s", float("nan")),
        )  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        log.error(
            "trial %s (%s) failed; its error is in %s", trial.trial_id, trial_label(trial.config), trial.local_path
        )


def _scheduler(plan: SweepPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "grid":
        return FIFOScheduler()
    return ASHAScheduler(  # trials that reach max_t end by themselves (stopping them would race their wrap-up)
        time_attr="step", max_t=plan.max_steps, grace_period=plan.grace_steps, reduction_factor=plan.reduction_factor,
        stop_last_trials=False,
    )  # fmt: skip


def _start_parent_run(plan: SweepPlan) -> str:
    """Create the sweep's MLflow run (params: the sweep settings and the space; artifacts: space, base config)."""
    import yaml

    settings = ("study", "scheduler", "num_samples", "max_concurrent", "max_steps", "report_every", "fid_samples",
                "nfe", "grace_steps", "reduction_factor")  # fmt: skip
    params = {f"sweep.{k}": getattr(plan, k) for k in settings}
    params.update({f"sweep.{k}": v for k, v in asdict(plan.resources).items()})
    params.update({f"space.{k}": v for k, v in plan.space.items()})
    tags = {SWEEP_TAG: plan.name, "dctdiff.data": redact(plan.data)}
    run = create_run(plan.tracking_uri, plan.experiment, plan.name, tags, params, job="sweep")
    run.log_text(yaml.safe_dump({"description": plan.description, "space": plan.space}), "space.yaml")
    run.log_text(plan.base_config().to_yaml(), "base_config.yaml")
    return run.run_id


def new_plan(
    args: argparse.Namespace, worker_resources: WorkerResources, tracking: TrackingOptions, log_level: str
) -> SweepPlan:
    """The plan of a new sweep from the command line (validated)."""
    base = build_config(args.preset, args.config, args.set)
    study = load_study(args.study)
    validate_space(study.space, base, worker_resources.workers)
    num_samples = args.num_samples or study.num_samples
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    if num_samples > 1 and is_pure_grid(study.space):
        raise ConfigError(
            f"--num-samples {num_samples} would repeat the same {grid_size(study.space)} grid trials identically; "
            "to repeat them with other seeds add cadence.seed: {grid: [0, 1]} to the space, or use --num-samples 1"
        )
    max_steps = args.max_steps or base.cadence.max_steps
    report_every = args.report_every or max(1, max_steps // 10)
    grace = args.grace_steps or max(report_every, max_steps // 8)
    for flag, value in (("--report-every", report_every), ("--grace-steps", grace)):
        if not 1 <= value <= max_steps:
            raise ConfigError(f"{flag} must be in 1..--max-steps ({max_steps}), got {value}")
    if args.reduction_factor <= 1:
        raise ConfigError(f"--reduction-factor must be > 1, got {args.reduction_factor}")
    if not args.data:
        raise ConfigError("--data is required (a `dctdiff prepare` output)")
    plan = SweepPlan(
        name=args.name or f"{study.name}-{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=storage.normalize(args.storage),
        data=storage.normalize(args.data),
        base=base.to_dict(),
        study=study.name,
        space=study.space,
        scheduler=args.scheduler or study.scheduler or DEFAULT_SCHEDULER,
        num_samples=num_samples,
        max_steps=max_steps,
        report_every=report_every,
        fid_samples=args.fid_samples or base.cadence.fid_samples,
        nfe=args.nfe or base.cadence.sample_nfe,
        grace_steps=grace,
        reduction_factor=args.reduction_factor,
        resources=worker_resources,
        max_concurrent=args.max_concurrent_trials,
        tracking_uri=resolve_tracking_uri(tracking.uri),
        experiment=tracking.experiment,
        log_level=log_level,
        description=study.description,
        fid_reference=storage.normalize(args.fid_reference) if args.fid_reference else "",
    )
    if plan.fid_samples < MIN_FEATURES:
        raise ConfigError(
            f"--fid-samples must be >= {MIN_FEATURES} (FID needs a covariance, KID subsets of half the samples), "
            f"got {plan.fid_samples}"
        )
    trial_config(plan, {})  # the sweep's cadence must make a valid config
    return plan


@dataclass
class SweepOutcome:
    """What a sweep run produced."""

    rows: list[TrialRow]
    interrupted: bool
    results_csv: str
    best_config: str | None
    study_report: str


@ends_on_lost_cluster
def run_sweep(plan: SweepPlan, resume: bool = False, address: str | None = None) -> SweepOutcome:
    """Start (or, with ``resume``, restore) the sweep on the current Ray cluster and wait for it."""
    import ray
    from ray import tune

    base = plan.base_config()
    for space in key_values(plan.space, "data.space", base.data.space):  # a bad --data fails here, before Ray
        info = load_dataset_info(plan.data, with_values(base, {"data.space": space}))  # starts, for every arm
    if plan.fid_reference:
        info = load_dataset_info(plan.fid_reference, base, "--fid-reference", reads_tokens=False)
    init_ray(address)
    resources = ray.cluster_resources()
    group = plan.resources
    cpus, concurrent = plan_concurrency(
        resources.get("CPU", 0.0), resources.get("GPU", 0.0), group.workers, group.cpus_per_worker,
        group.gpus_per_worker, plan.max_concurrent,
    )  # fmt: skip
    plan = replace(plan, resources=replace(group, cpus_per_worker=cpus), max_concurrent=concurrent)
    reference = plan.fid_reference or plan.data
    ensure_reference_stats(reference, info.rows, base.cadence.sample_precision)  # once, not per trial
    if resume:
        if not tune.Tuner.can_restore(plan.directory):
            raise FileNotFoundError(f"--resume: no Tune experiment state in {plan.directory}; start the sweep anew")
        RunHandle(plan.tracking_uri, plan.parent_run_id).reopen()
    else:
        plan = replace(plan, parent_run_id=_start_parent_run(plan))
        saved = {
            **asdict(plan),
            "tracking_uri": redact(plan.tracking_uri),
            "data": redact(plan.data),
            "fid_reference": redact(plan.fid_reference),
        }
        storage.write_json(storage.join(plan.directory, SWEEP_FILE), saved)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"cpu": TRIAL_CPUS})
    if resume:
        tuner = tune.Tuner.restore(plan.directory, trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_param_space(plan.space),
            tune_config=tune.TuneConfig(
                metric="fid",
                mode="min",
                scheduler=_scheduler(plan),
                num_samples=plan.num_samples,
                max_concurrent_trials=plan.max_concurrent,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=plan.name,
                storage_path=plan.storage,
                callbacks=[ChildRunCloser(plan), TrialProgress()],
                verbose=0,  # Tune's 30-second status tables: TrialProgress logs each trial's start and end
            ),
        )
    log.info("sweep %s: %d trial(s) at once, MLflow parent run %s", plan.name, plan.max_concurrent, plan.parent_run_id)
    try:
        return _finish(plan, tuner.fit())
    except BaseException:
        RunHandle(plan.tracking_uri, plan.parent_run_id).end("FAILED")
        raise


def _finish(plan: SweepPlan, results: Any) -> SweepOutcome:
    """Result table, best config, MLflow artifacts and statuses after ``Tuner.fit`` returned."""
    parent = RunHandle(plan.tracking_uri, plan.parent_run_id)
    rows = trial_rows(results, plan.max_steps, plan.tracking_uri, plan.parent_run_id)
    interrupted = any(r.status == "unfinished" for r in rows)
    for row in rows:
        if row.status == "unfinished":  # the sweep was interrupted; --resume sets them RUNNING again
            _end_child_run(plan, row.trial, "KILLED")
    results_uri = storage.join(plan.directory, RESULTS_FILE)
    storage.write_bytes(results_uri, rows_csv(rows).encode())
    parent.log_text(rows_csv(rows), RESULTS_FILE)
    log.info(
        "sweep %s: %d trials, ranked by FID (%d samples, %d NFE)\n%s",
        plan.name,
        len(rows),
        plan.fid_samples,
        plan.nfe,
        format_table(rows),
    )
    best_uri = None
    ranked = [r for r in rows if not math.isnan(r.best_fid)]
    if ranked:
        best = ranked[0]
        text = best_config_yaml(
            with_values(plan.base_config(), best.values), best, plan.name, plan.fid_samples, plan.nfe
        )
        best_uri = storage.join(plan.directory, BEST_CONFIG_FILE)
        storage.write_bytes(best_uri, text.encode())
        parent.log_text(text, BEST_CONFIG_FILE)
        parent.log_metrics(
            [("best_fid", best.best_fid, 0)], {"dctdiff.best_trial": best.trial, "dctdiff.best_run_id": best.run_id}
        )
        log.info(
            "best: trial %s FID %.4g; config for `dctdiff train --config`: %s", best.trial, best.best_fid, best_uri
        )
    report_uri, *pictures = write_study_report(
        plan.directory, plan.tracking_uri, plan.parent_run_id, list(plan.space), study_intro(plan, len(rows))
    )
    log.info("study report: %s", ", ".join([report_uri, *pictures]))
    parent.end("KILLED" if interrupted else "FINISHED")
    log.info("results: %s\n%s", results_uri, review_hint(plan.tracking_uri, plan.parent_run_id))
    if interrupted:
        log.warning(
            "interrupted: continue with `dctdiff sweep --storage %s --name %s --resume`", plan.storage, plan.name
        )
    return SweepOutcome(rows, interrupted, results_uri, best_uri, report_uri)


def study_intro(plan: SweepPlan, trials: int) -> str:
    """The heading of ``study.md``: the study, its description and the measurement settings, naming the FID
    reference (the held-out ``--fid-reference`` or the training images)."""
    reference = (
        f"the held-out images of `{redact(plan.fid_reference)}`"
        if plan.fid_reference
        else f"the training images of `{redact(plan.data)}`"
    )
    return (
        f"# Study {plan.study}: sweep {plan.name}\n\n{plan.description or '(no description)'}\n\n"
        f"{trials} trial(s), `--preset {plan.base['preset']}`, scheduler {plan.scheduler}; FID and KID of "
        f"{plan.fid_samples} EMA samples ({plan.base['cadence']['sampler']}, {plan.nfe} NFE) against "
        f"{reference} every {plan.report_every} steps up to {plan.max_steps}."
    )


def load_plan(storage_root: str, name: str | None) -> SweepPlan:
    """The saved plan of sweep ``name`` under ``storage_root`` (for --resume)."""
    if not name:
        raise ConfigError("--resume needs --name: the sweep's folder under --storage")
    record = storage.join(storage.normalize(storage_root), name, SWEEP_FILE)
    if not storage.exists(record):
        raise FileNotFoundError(f"--resume: {record} does not exist; check --storage and --name")
    return SweepPlan.from_json(storage.read_json(record))
