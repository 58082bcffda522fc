"""`dctdiff train`: train a DCTdiff (or pixel-baseline) U-ViT with Ray Train, tracked in MLflow.

    dctdiff train --preset demo --data outputs/demo/data
    ray job submit --working-dir . -- dctdiff train --preset cifar10 --data s3://bucket/cifar10 \\
        --workers 8 --gpus-per-worker 1 --storage s3://bucket/runs --mlflow-uri http://mlflow:5000

The data is a `dctdiff prepare` output (Parquet coefficient shards + stats.json). The run's checkpoints
go to --storage/--name; --resume continues the newest checkpoint of a run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass

from dctdiff.commands import options as flags
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.mlflow_tracking import TrackingOptions, open_tracking, redact, resolve_tracking_uri, review_hint
from dctdiff.infra.ray_cluster import ClusterLostError, ResourceError
from dctdiff.models.config import ConfigError, TrainConfig, build_config, check_run_name
from dctdiff.training.batch_order import first_batch_ids
from dctdiff.training.dataset_info import load_dataset_info
from dctdiff.training.failure_record import FirstStepError
from dctdiff.training.step_metrics import NonFiniteLossError
from dctdiff.training.train_job import LaunchOptions, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """The parsed command line: what to train, how to launch it, where to track it."""

    config: TrainConfig
    options: LaunchOptions
    tracking: TrackingOptions
    dry_run: bool
    show_batches: int = 0  # with dry_run: print the ids of the first N global batches of epoch 0


def build_parser() -> argparse.ArgumentParser:
    """The flags of `dctdiff train`."""
    parser = flags.job_parser("dctdiff train", __doc__)
    flags.add_config_flags(parser, "preset: demo, fmnist, cifar10, celeba64, imagenet64, ffhq128, ...")
    flags.add_data_flag(parser)
    parser.add_argument("--space", choices=["dct", "pixel"], help="dct (DCTdiff) or pixel (the U-ViT baseline)")
    parser.add_argument("--max-steps", type=flags.positive_int, help="shorthand for --set cadence.max_steps=N")
    flags.add_worker_flags(parser, "")
    flags.add_storage_flag(parser, "outputs/runs", "checkpoint root")
    parser.add_argument("--name", help="run name (default: preset-space-timestamp)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the newest checkpoint of --name (default: newest run)"
    )
    flags.add_mlflow_flags(parser)
    flags.add_ray_flag(parser)
    flags.add_dry_run_flag(parser)
    parser.add_argument(
        "--show-batches", type=flags.positive_int, default=0, metavar="N",
        help="with --dry-run: also print the ids of the first N global batches of epoch 0, one line each, "
        "exactly as training draws them (reads the ids of --data)",
    )  # fmt: skip
    flags.add_logging_flags(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainRequest:
    """Resolve the command line; bad flags exit with a message, bad config values raise ConfigError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.space:
        overrides.append(f"data.space={args.space}")
    if args.max_steps is not None:
        overrides.append(f"cadence.max_steps={args.max_steps}")
    config = build_config(args.preset, args.config, overrides)
    if not args.dry_run and not args.data:
        parser.error("--data is required (a `dctdiff prepare` output)")
    if args.show_batches and not (args.dry_run and args.data):
        parser.error("--show-batches needs --dry-run and --data")
    options = LaunchOptions(
        data=args.data or "",
        fid_reference=args.fid_reference,
        resources=flags.worker_resources(args),
        storage=args.storage,
        name=check_run_name(args.name),
        resume=args.resume,
        address=args.address,
        log_level=flags.log_level(args),
    )
    return TrainRequest(config, options, flags.tracking_options(args), args.dry_run, args.show_batches)


def dry_run_settings(request: TrainRequest) -> dict:
    """What `--dry-run` prints: the resolved config, then the launch options and the MLflow settings (URI resolved)."""
    tracking = {**asdict(request.tracking), "uri": resolve_tracking_uri(request.tracking.uri)}
    return {**request.config.to_dict(), "launch": asdict(request.options), "mlflow": tracking}


def write_batches(request: TrainRequest) -> None:
    """``--show-batches N``: one line per global batch of epoch 0, ``batch B: id id ...``."""
    info = load_dataset_info(request.options.data, request.config)
    batches = first_batch_ids(info, request.config.cadence.seed, request.config.optim.batch_size, request.show_batches)
    for index, ids in enumerate(batches):
        sys.stdout.write(f"batch {index}: {' '.join(ids)}\n")


def main(argv: list[str] | None = None) -> int:
    """Run `dctdiff train`; returns the exit status (2: bad input, with one line saying what to fix; 1: a
    non-finite loss or a first-step exception stopped the run without a retry, or the --address cluster was
    lost, with one line naming it)."""
    try:
        request = parse_args(argv)
        configure_logging(request.options.log_level)
        if request.dry_run:
            flags.print_dry_run("train", dry_run_settings(request))
            if request.show_batches:
                write_batches(request)
            return 0
        storage.check_writable(request.options.storage, "--storage")
        open_tracking(request.tracking.uri)  # an unreachable server fails here, in seconds, before any work
        result, run_id = train(request.config, request.options, request.tracking)
    except (ConfigError, ResourceError, FileNotFoundError, FileExistsError, ValueError) as error:
        return flags.report_error(f"{error}")
    except (NonFiniteLossError, FirstStepError, ClusterLostError) as error:  # the run failed: one line, exit 1
        return flags.report_error(f"{error}", status=1)
    metrics = result.metrics or {}
    log.info(
        "done: step %s loss %.4f; checkpoint %s", metrics.get("step"), metrics.get("loss", float("nan")),
        result.checkpoint.path if result.checkpoint else None,
    )  # fmt: skip
    tracking_uri = resolve_tracking_uri(request.tracking.uri)
    log.info("MLflow run %s in %s\n%s", run_id, redact(tracking_uri), review_hint(tracking_uri, run_id))
    return 0
