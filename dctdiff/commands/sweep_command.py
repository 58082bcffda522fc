"""`dctdiff sweep`: Ray Tune sweeps over training runs, ranked by FID, tracked in MLflow.

    dctdiff sweep --study snr_scale --preset demo --data outputs/demo/data --max-steps 2000
    dctdiff sweep --study my_space.yaml --preset cifar10 --data s3://bucket/cifar10 --workers 8 \\
        --gpus-per-worker 1 --storage s3://bucket/sweeps --mlflow-uri http://mlflow:5000 --scheduler grid
    dctdiff sweep --name snr_scale-demo-20250101-120000 --resume

Each trial is a training run (a child MLflow run of the sweep's run) reporting FID every --report-every
steps; ASHA stops poor trials early. The result table and the best trial's config (for
`dctdiff train --config`) go to the sweep's MLflow run and to <storage>/<name>/.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

from dctdiff.commands import options as flags
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.mlflow_tracking import open_tracking, resolve_tracking_uri, restore_secret
from dctdiff.infra.ray_cluster import ClusterLostError, ResourceError
from dctdiff.models.config import ConfigError, check_run_name
from dctdiff.tuning.search_space import DEFAULT_SCHEDULER, SCHEDULERS, builtin_studies
from dctdiff.tuning.sweep_job import INTERRUPTED, SWEEP_FILE, load_plan, new_plan, run_sweep

RESUME_FLAGS = {
    "resume",
    "name",
    "storage",
    "address",
    "log_level",
    "quiet",
    "mlflow_uri",
    "data",
    "fid_reference",
    "dry_run",
}  # what --resume may be given; the rest is saved


def build_parser() -> argparse.ArgumentParser:
    """The flags of `dctdiff sweep`."""
    parser = flags.job_parser("dctdiff sweep", __doc__)
    parser.add_argument("--study", help=f"built-in study ({', '.join(builtin_studies())}) or a study YAML file")
    flags.add_config_flags(parser, "paper preset the trials start from")
    flags.add_data_flag(parser)
    parser.add_argument(
        "--scheduler", choices=SCHEDULERS,
        help=f"asha: stop poor trials early; grid: run all (default: the study's, else {DEFAULT_SCHEDULER})",
    )  # fmt: skip
    parser.add_argument("--num-samples", type=int, help="samples of the space (default: the study's, else 1)")
    parser.add_argument("--max-concurrent-trials", type=int, help="default: as many as the cluster holds")
    parser.add_argument("--max-steps", type=int, help="training steps per trial (default: the config's)")
    parser.add_argument(
        "--report-every", type=int, help="steps between reports, each with an FID (default max_steps/10)"
    )
    parser.add_argument("--fid-samples", type=int, help="samples per FID (default: cadence.fid_samples)")
    parser.add_argument("--nfe", type=int, help="sampler steps for FID and grids (default: cadence.sample_nfe)")
    parser.add_argument(
        "--grace-steps", type=int, help="ASHA: steps before a trial may be stopped (default max_steps/8)"
    )
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep the best 1/f at each rung")
    flags.add_worker_flags(parser, " per trial")
    flags.add_storage_flag(parser, "outputs/sweeps", "sweep root")
    parser.add_argument("--name", help="sweep name (default: study-preset-timestamp)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    flags.add_mlflow_flags(parser)
    flags.add_ray_flag(parser)
    flags.add_dry_run_flag(parser)
    flags.add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `dctdiff sweep`; 0 when it finished, 130 when interrupted (resumable), 2 on bad input, 1 when the
    --address cluster was lost."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(flags.log_level(args))
    try:
        check_run_name(args.name)
        if args.resume:
            changed = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v != parser.get_default(k)]
            if changed:
                dropped = ", ".join("--" + k.replace("_", "-") for k in sorted(changed))
                raise ConfigError(f"--resume continues a sweep with its saved settings; drop {dropped}")
            plan = load_plan(args.storage, args.name)
            plan = replace(
                plan,  # sweep.json holds redacted URIs: the secrets come from the command line again
                tracking_uri=restore_secret(plan.tracking_uri, args.mlflow_uri and resolve_tracking_uri(args.mlflow_uri), "--mlflow-uri"),
                data=restore_secret(plan.data, args.data and storage.normalize(args.data), "--data"),
                fid_reference=restore_secret(
                    plan.fid_reference, args.fid_reference and storage.normalize(args.fid_reference), "--fid-reference"
                ),
            )  # fmt: skip
        else:
            if not args.study:
                parser.error("--study is required (a built-in study or a YAML file)")
            plan = new_plan(args, flags.worker_resources(args), flags.tracking_options(args), flags.log_level(args))
            if storage.exists(storage.join(plan.directory, SWEEP_FILE)):
                raise FileExistsError(
                    f"sweep {plan.name} exists under {plan.storage}; add --resume or choose another --name"
                )
        if args.dry_run:
            return flags.print_dry_run("sweep", asdict(plan))
        storage.check_writable(plan.storage, "--storage")
        open_tracking(plan.tracking_uri)
        outcome = run_sweep(plan, resume=args.resume, address=args.address)
    except (ConfigError, ResourceError, FileNotFoundError, FileExistsError, ValueError) as error:
        return flags.report_error(f"{error}")
    except ClusterLostError as error:
        return flags.report_error(f"{error}", status=1)
    return INTERRUPTED if outcome.interrupted else 0
