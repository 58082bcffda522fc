"""Command-line flags that several jobs share, declared once, and the conversions of their values."""

from __future__ import annotations

import argparse
import logging
import os
from typing import NoReturn

from dctdiff.infra.logs import LEVELS, configure_logging
from dctdiff.infra.mlflow_tracking import DEFAULT_EXPERIMENT, TrackingOptions, redact
from dctdiff.infra.suggestions import did_you_mean
from dctdiff.training.train_job import WorkerResources


class JobParser(argparse.ArgumentParser):
    """The parser of every job: an argument error is one ``error: ...`` line on stderr and exit status 2;
    the usage comes with ``--help`` only. Its subcommand parsers are JobParsers too."""

    def _check_value(self, action: argparse.Action, value: object) -> None:
        """argparse's check of ``choices``, with the nearest choice suggested (``--sampler dpm2m``)."""
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            raise argparse.ArgumentError(action, error.message + did_you_mean(value, action.choices)) from None

    def error(self, message: str) -> NoReturn:
        """Report ``message`` as the job's one error line and exit with status 2."""
        self.exit(report_error(f"{message} (see {self.prog} --help)"))


def job_parser(prog: str, description: str | None) -> JobParser:
    """A job's parser: ``prog`` and its module docstring as the help text, kept as written."""
    return JobParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``-q``."""
    group = parser.add_argument_group("output")
    group.add_argument("--log-level", type=str.upper, choices=LEVELS, default="INFO", help="default INFO")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (--log-level WARNING)")


def log_level(args: argparse.Namespace) -> str:
    """The level the logging flags ask for."""
    return "WARNING" if args.quiet else args.log_level


def add_config_flags(parser: argparse.ArgumentParser, preset_help: str) -> None:
    """``--preset``, ``--config`` and ``--set``: a TrainConfig resolved by ``build_config``."""
    parser.add_argument("--preset", default="demo", help=preset_help)
    parser.add_argument(
        "--config", action="append", default=[], metavar="FILE.yaml", help="YAML overrides (repeatable)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set optim.lr=1e-4")


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    """``--data``: a prepare output; ``--fid-reference``: the one FID/KID compare with."""
    parser.add_argument("--data", help="a `dctdiff prepare` output folder or URI")
    parser.add_argument(
        "--fid-reference", metavar="DATA",
        help="a `dctdiff prepare` output prepared like --data (e.g. with --split test) whose images FID and KID "
        "compare with (default: the training images of --data)",
    )  # fmt: skip


def add_worker_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """Ray Train worker resources and restarts: the fields of WorkerResources."""
    parser.add_argument("--workers", type=positive_int, default=1, help=f"Ray Train workers{what} (one per GPU)")
    parser.add_argument("--cpus-per-worker", type=float, help="default: fit the cluster, keeping 1 CPU for Ray Data")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    parser.add_argument("--placement", choices=["PACK", "SPREAD"], default="PACK", help="SPREAD: one worker per node")


def worker_resources(args: argparse.Namespace) -> WorkerResources:
    """The worker flags as WorkerResources."""
    return WorkerResources(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures, args.placement)


def add_storage_flag(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    """``--storage``: the root of checkpoints or sweeps (``$DCTDIFF_STORAGE`` overrides the default)."""
    parser.add_argument("--storage", default=os.environ.get("DCTDIFF_STORAGE", default), help=f"{what} (path or URI)")


def add_mlflow_flags(parser: argparse.ArgumentParser, experiment: str = DEFAULT_EXPERIMENT) -> None:
    """``--mlflow-uri`` and ``--experiment``."""
    parser.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default=experiment, help="MLflow experiment of new runs")


def tracking_options(args: argparse.Namespace) -> TrackingOptions:
    """The MLflow flags as TrackingOptions."""
    return TrackingOptions(args.mlflow_uri, args.experiment)


def add_ray_flag(parser: argparse.ArgumentParser) -> None:
    """``--address``."""
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")


def add_dry_run_flag(parser: argparse.ArgumentParser) -> None:
    """``--dry-run``."""
    parser.add_argument("--dry-run", action="store_true", help="check the settings, print what would run, and exit")


def print_dry_run(job: str, settings: dict) -> int:
    """``--dry-run``: the job's resolved settings as YAML on stdout (secrets redacted); nothing starts."""
    import sys

    import yaml

    sys.stdout.write(redact(yaml.safe_dump({"job": job, **settings}, sort_keys=False)))
    return 0


def report_error(message: str, status: int = 2) -> int:
    """Log a job's one-line error (``error: ...`` on stderr) and return its exit status."""
    logger = logging.getLogger("dctdiff")
    if not logger.handlers:  # an argument error comes before the job configures its logging
        configure_logging()
    logger.error("error: %s", redact(message))
    return status
