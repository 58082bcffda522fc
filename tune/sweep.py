"""Ray Tune sweeps over the DCTdiff training pipeline, ranked by FID and tracked in MLflow.

    python tune/sweep.py --study snr_scale --preset demo --data outputs/demo-data --max-steps 2000
    python tune/sweep.py --study my_space.yaml --preset cifar10 --data s3://bucket/cifar10 --workers 8 \
        --gpus-per-worker 1 --storage s3://bucket/sweeps --mlflow-uri http://mlflow:5000 --scheduler grid
    python tune/sweep.py --name snr_scale-demo-20250101-120000 --resume

Every trial is one run of ``pipelines/train.py`` (its ``launch``: the same Ray Train loop, data path,
checkpoints and MLflow logging) inside a Tune function trainable, the pattern Ray 2.60 recommends for
tuning Ray Train (DESIGN.md §9). Every report carries the FID of ``--fid-samples`` EMA samples at ``--nfe``
against the training set's statistics; trials are ranked, and stopped early by ASHA, on it. The training
loss is not the objective: with another SNR scale c the loss averages over another distribution of noise
levels, and EBFR changes its weights, so loss values of different trials do not measure the same thing.

MLflow: a parent run for the sweep, one child run per trial (params, metrics over steps, sample grids,
tag ``mlflow.parentRunId``); at the end the result table (``results.csv``) and the best trial's config
(``best_config.yaml``, ready for ``pipelines/train.py --config``) go to the parent run and to
``<storage>/<name>/``. ``--resume`` continues an interrupted sweep (Tuner.restore): finished trials are
kept, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo importable,
    _REPO = str(Path(__file__).resolve().parents[1])  # here and in the workers of a local Ray started from here
    sys.path.insert(0, _REPO)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))

from ray.tune import Callback

from dctdiff import storage
from dctdiff.config import ConfigError, TrainConfig, build_config, check_run_name, config_from_dict, positive_int
from dctdiff.data import load_dataset_info
from dctdiff.periodic_fid import ensure_reference_stats
from dctdiff.ray_utils import DATA_CPUS, ResourceError, init_ray
from dctdiff.tracking import get_or_create_experiment, redact, resolve_tracking_uri, restore_secret, ui_command
from pipelines.train import LaunchOptions, launch
from tune.report import (
    PARENT_TAG, STOPPED_TAG, SWEEP_TAG, TRIAL_TAG, TrialRow, best_config_yaml, child_runs, format_table, rows_csv,
    trial_rows,
)  # fmt: skip
from tune.space import grid_size, is_pure_grid, load_study, tune_param_space, validate_space, with_values

SWEEP_FILE = "dctdiff_sweep.json"  # in <storage>/<name>/: the plan, so --resume needs only the name
TRIALS_DIR = "trials"  # <storage>/<name>/trials/<trial id>/: each trial's Ray Train run (checkpoints)
RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_CPUS = 0.01  # the trial's Tune actor only drives its Ray Train run; the workers hold the real CPUs
INTERRUPTED = 130


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
    workers: int
    cpus_per_worker: float | None
    gpus_per_worker: float
    max_concurrent: int | None
    max_failures: int
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""

    @property
    def directory(self) -> str:
        return storage.join(self.storage, self.name)

    def base_config(self) -> TrainConfig:
        return config_from_dict(self.base)


def trial_config(plan: SweepPlan, values: dict[str, Any]) -> TrainConfig:
    """A trial's training config: the base config, the trial's values, and the sweep's schedule (one
    report, FID, checkpoint and sample grid every ``report_every`` steps, so every Tune result has an FID)."""
    every = plan.report_every
    schedule = {
        "schedule.max_steps": plan.max_steps,
        **{f"schedule.{k}": every for k in ("log_every", "fid_every", "checkpoint_every", "sample_every")},
        "schedule.fid_samples": plan.fid_samples,
        "schedule.sample_nfe": plan.nfe,
    }
    return with_values(plan.base_config(), {**values, **schedule})


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


def run_trial(values: dict[str, Any], plan: SweepPlan) -> None:
    """Tune function trainable: one Ray Train run of pipelines/train.py with the trial's values.

    Ray Train reports reach Tune through TuneReportCallback; rank 0 logs to the trial's MLflow run, a
    child of the sweep's run. A trial that Tuner.restore restarts continues its checkpoints and run.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = tune.get_context().get_trial_id()
    label = " ".join(f"{key.rpartition('.')[2]}={_short(value)}" for key, value in sorted(values.items()))
    options = LaunchOptions(
        data=plan.data,
        workers=plan.workers,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=plan.gpus_per_worker,
        storage=storage.join(plan.directory, TRIALS_DIR),
        name=trial,
        max_failures=plan.max_failures,
        mlflow_uri=plan.tracking_uri,
        experiment=plan.experiment,
        tune=True,
        extra_tags={
            PARENT_TAG: plan.parent_run_id, SWEEP_TAG: plan.name, TRIAL_TAG: trial, "mlflow.runName": f"{trial} {label}"
        },
    )  # fmt: skip
    launch(trial_config(plan, values), options, run_config_overrides={"callbacks": [TuneReportCallback()]})


def _end_child_run(plan: SweepPlan, trial_id: str, status: str, stopped_early: bool = False) -> None:
    """End a trial's MLflow run if it is RUNNING: the sweep, not launch, ends its trials' runs."""
    from mlflow.tracking import MlflowClient

    run = child_runs(plan.tracking_uri, plan.parent_run_id).get(trial_id)
    if run is None or run.info.status != "RUNNING":
        return
    client = MlflowClient(plan.tracking_uri)
    if stopped_early:
        client.set_tag(run.info.run_id, STOPPED_TAG, "true")
    client.set_terminated(run.info.run_id, status=status)


class ChildRunCloser(Callback):
    """Ends the MLflow run of every trial when Tune ends the trial (finished, stopped by ASHA or failed)."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        stopped = int(trial.last_result.get("step", 0)) < self.plan.max_steps
        _end_child_run(self.plan, trial.trial_id, "FINISHED", stopped_early=stopped)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        _end_child_run(self.plan, trial.trial_id, "FAILED")


def _scheduler(plan: SweepPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "grid":
        return FIFOScheduler()
    return ASHAScheduler(  # trials that reach max_t end by themselves (stopping them would race their wrap-up)
        time_attr="step", max_t=plan.max_steps, grace_period=plan.grace_steps, reduction_factor=plan.reduction_factor,
        stop_last_trials=False,
    )  # fmt: skip


def _start_parent_run(plan: SweepPlan, study_description: str) -> str:
    """Create the sweep's MLflow run (params: the sweep settings and the space; artifacts: space, base config)."""
    import yaml
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    experiment_id = get_or_create_experiment(plan.tracking_uri, plan.experiment)
    tags = {"mlflow.runName": plan.name, SWEEP_TAG: plan.name, "dctdiff.data": redact(plan.data)}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    settings = ("study", "scheduler", "num_samples", "max_concurrent", "max_steps", "report_every", "fid_samples",
                "nfe", "grace_steps", "reduction_factor", "workers", "cpus_per_worker", "gpus_per_worker")  # fmt: skip
    params = {f"sweep.{k}": str(getattr(plan, k)) for k in settings}
    params.update({f"space.{k}": str(v) for k, v in plan.space.items()})
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    client.log_text(run_id, yaml.safe_dump({"description": study_description, "space": plan.space}), "space.yaml")
    client.log_text(run_id, plan.base_config().to_yaml(), "base_config.yaml")
    return run_id


def new_plan(args: argparse.Namespace) -> tuple[SweepPlan, str]:
    """The plan of a new sweep from the command line (validated), and the study's description."""
    base = build_config(args.preset, args.config, args.set)
    study = load_study(args.study)
    validate_space(study.space, base)
    num_samples = args.num_samples or study.num_samples
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    if num_samples > 1 and is_pure_grid(study.space):
        raise ConfigError(
            f"--num-samples {num_samples} would repeat the same {grid_size(study.space)} grid trials identically; "
            "add a sampled key (e.g. schedule.seed: {choice: [0, 1, 2]}) or use --num-samples 1"
        )
    max_steps = args.max_steps or base.schedule.max_steps
    report_every = args.report_every or max(1, max_steps // 10)
    grace = args.grace_steps or max(report_every, max_steps // 8)
    for flag, value in (("--report-every", report_every), ("--grace-steps", grace)):
        if not 1 <= value <= max_steps:
            raise ConfigError(f"{flag} must be in 1..--max-steps ({max_steps}), got {value}")
    if args.reduction_factor <= 1:
        raise ConfigError(f"--reduction-factor must be > 1, got {args.reduction_factor}")
    if not args.data:
        raise ConfigError("--data is required (a pipelines/prepare.py output)")
    plan = SweepPlan(
        name=args.name or f"{study.name}-{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=storage.normalize(args.storage),
        data=storage.normalize(args.data),
        base=base.to_dict(),
        study=study.name,
        space=study.space,
        scheduler=args.scheduler,
        num_samples=num_samples,
        max_steps=max_steps,
        report_every=report_every,
        fid_samples=args.fid_samples or base.schedule.fid_samples,
        nfe=args.nfe or base.schedule.sample_nfe,
        grace_steps=grace,
        reduction_factor=args.reduction_factor,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        max_concurrent=args.max_concurrent_trials,
        max_failures=args.max_failures,
        tracking_uri=resolve_tracking_uri(args.mlflow_uri),
        experiment=args.experiment,
    )
    if plan.fid_samples < 2:
        raise ConfigError(f"--fid-samples must be >= 2 (FID needs a covariance), got {plan.fid_samples}")
    trial_config(plan, {})  # the sweep's schedule must make a valid config
    return plan, study.description


@dataclass
class SweepOutcome:
    """What a sweep run produced."""

    rows: list[TrialRow]
    interrupted: bool
    results_csv: str
    best_config: str | None


def run_sweep(plan: SweepPlan, resume: bool = False, address: str | None = None, description: str = "") -> SweepOutcome:
    """Start (or, with ``resume``, restore) the sweep on the current Ray cluster and wait for it."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    init_ray(address)
    resources = ray.cluster_resources()
    plan.cpus_per_worker, plan.max_concurrent = plan_concurrency(
        resources.get("CPU", 0.0), resources.get("GPU", 0.0), plan.workers, plan.cpus_per_worker,
        plan.gpus_per_worker, plan.max_concurrent,
    )  # fmt: skip
    info = load_dataset_info(plan.data, plan.base_config())
    ensure_reference_stats(plan.data, info.rows)  # once here, not in every trial
    client = MlflowClient(plan.tracking_uri)
    if resume:
        if not tune.Tuner.can_restore(plan.directory):
            raise FileNotFoundError(f"--resume: no Tune experiment state in {plan.directory}; start the sweep anew")
        client.update_run(plan.parent_run_id, status="RUNNING")
    else:
        plan.parent_run_id = _start_parent_run(plan, description)
        storage.write_json(storage.join(plan.directory, SWEEP_FILE), {**asdict(plan), "tracking_uri": redact(plan.tracking_uri), "data": redact(plan.data)})  # fmt: skip
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
                name=plan.name, storage_path=plan.storage, callbacks=[ChildRunCloser(plan)], verbose=1
            ),
        )
    print(f"sweep {plan.name}: {plan.max_concurrent} trial(s) at once, MLflow parent run {plan.parent_run_id}", flush=True)
    try:
        results = tuner.fit()
    except BaseException:
        client.set_terminated(plan.parent_run_id, status="FAILED")
        raise
    return _finish(plan, results)


def _finish(plan: SweepPlan, results: Any) -> SweepOutcome:
    """Result table, best config, MLflow artifacts and statuses after ``Tuner.fit`` returned."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    rows = trial_rows(results, plan.max_steps, plan.tracking_uri, plan.parent_run_id)
    interrupted = any(r.status == "unfinished" for r in rows)
    for row in rows:
        if row.status == "unfinished":  # the sweep was interrupted; --resume sets them RUNNING again
            _end_child_run(plan, row.trial, "KILLED")
    results_uri = storage.join(plan.directory, RESULTS_FILE)
    storage.write_bytes(results_uri, rows_csv(rows).encode())
    client.log_text(plan.parent_run_id, rows_csv(rows), RESULTS_FILE)
    print(f"\nsweep {plan.name}: {len(rows)} trials, ranked by FID ({plan.fid_samples} samples, {plan.nfe} NFE)")
    print(format_table(rows))
    best_uri = None
    ranked = [r for r in rows if not math.isnan(r.best_fid)]
    if ranked:
        best = ranked[0]
        text = best_config_yaml(with_values(plan.base_config(), best.values), best, plan.name, plan.fid_samples, plan.nfe)
        best_uri = storage.join(plan.directory, BEST_CONFIG_FILE)
        storage.write_bytes(best_uri, text.encode())
        client.log_text(plan.parent_run_id, text, BEST_CONFIG_FILE)
        client.log_metric(plan.parent_run_id, "best_fid", best.best_fid)
        client.set_tag(plan.parent_run_id, "dctdiff.best_trial", best.trial)
        client.set_tag(plan.parent_run_id, "dctdiff.best_run_id", best.run_id)
        print(f"best: trial {best.trial} FID {best.best_fid:.4g}; config for pipelines/train.py --config: {best_uri}")
    client.set_terminated(plan.parent_run_id, status="KILLED" if interrupted else "FINISHED")
    print(f"results: {results_uri}\nreview in MLflow: {ui_command(plan.tracking_uri)}")
    if interrupted:
        print(f"interrupted: continue with `python tune/sweep.py --storage {plan.storage} --name {plan.name} --resume`")
    return SweepOutcome(rows, interrupted, results_uri, best_uri)


def load_plan(storage_root: str, name: str | None) -> SweepPlan:
    """The saved plan of sweep ``name`` under ``storage_root`` (for --resume)."""
    if not name:
        raise ConfigError("--resume needs --name: the sweep's folder under --storage")
    record = storage.join(storage.normalize(storage_root), name, SWEEP_FILE)
    if not storage.exists(record):
        raise FileNotFoundError(f"--resume: {record} does not exist; check --storage and --name")
    return SweepPlan(**storage.read_json(record))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

RESUME_FLAGS = {"resume", "name", "storage", "address", "mlflow_uri", "data"}  # what --resume may be given; the rest is saved


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", help="built-in study (snr_scale, ebfr, keep, lr) or a study YAML file")
    parser.add_argument("--preset", default="demo", help="paper preset the trials start from")
    parser.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML overrides (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set model.embed_dim=64")
    parser.add_argument("--data", help="a pipelines/prepare.py output folder or URI")
    parser.add_argument("--scheduler", choices=["asha", "grid"], default="asha", help="asha: stop poor trials early; grid: run all")
    parser.add_argument("--num-samples", type=int, help="samples of the space (default: the study's, else 1)")
    parser.add_argument("--max-concurrent-trials", type=int, help="default: as many as the cluster holds")
    parser.add_argument("--max-steps", type=int, help="training steps per trial (default: the config's)")
    parser.add_argument("--report-every", type=int, help="steps between reports, each with an FID (default max_steps/10)")
    parser.add_argument("--fid-samples", type=int, help="samples per FID (default: schedule.fid_samples)")
    parser.add_argument("--nfe", type=int, help="sampler steps for FID and grids (default: schedule.sample_nfe)")
    parser.add_argument("--grace-steps", type=int, help="ASHA: steps before a trial may be stopped (default max_steps/8)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep the best 1/f at each rung")
    parser.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers per trial")
    parser.add_argument("--cpus-per-worker", type=float, help="default: fit the cluster, keeping 1 CPU for Ray Data")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts per trial")
    parser.add_argument("--storage", default=os.environ.get("DCTDIFF_STORAGE", "outputs/sweeps"), help="sweep root (path or URI)")
    parser.add_argument("--name", help="sweep name (default: study-preset-timestamp)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="dctdiff", help="MLflow experiment of the parent and child runs")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_run_name(args.name)
        if args.resume:
            changed = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v != parser.get_default(k)]
            if changed:
                flags = ", ".join("--" + k.replace("_", "-") for k in sorted(changed))
                raise ConfigError(f"--resume continues a sweep with its saved settings; drop {flags}")
            plan, description = load_plan(args.storage, args.name), ""
            plan.tracking_uri = restore_secret(plan.tracking_uri, args.mlflow_uri and resolve_tracking_uri(args.mlflow_uri), "--mlflow-uri")  # fmt: skip
            plan.data = restore_secret(plan.data, args.data and storage.normalize(args.data), "--data")
        else:
            if not args.study:
                parser.error("--study is required (a built-in study or a YAML file)")
            plan, description = new_plan(args)
            if storage.exists(storage.join(plan.directory, SWEEP_FILE)):
                raise FileExistsError(
                    f"sweep {plan.name} exists under {plan.storage}; add --resume or choose another --name"
                )
        outcome = run_sweep(plan, resume=args.resume, address=args.address, description=description)
    except (ConfigError, ResourceError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    return INTERRUPTED if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
