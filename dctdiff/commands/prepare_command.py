"""`dctdiff prepare`: images -> Parquet shards of DCT coefficients + stats.json + report.json (Ray Data).

    dctdiff prepare --source SOURCE --output OUT [--preset NAME | --resolution R --block-size B]

SOURCE: one of the sources listed below (PATH and OUT may be local paths or URIs such as
s3://bucket/prefix). Runs on a local Ray, or on the cluster at --address / RAY_ADDRESS (as under
`ray job submit`). Re-running the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from dctdiff.commands import options as flags
from dctdiff.core.token_layout import AUTO_COLOUR
from dctdiff.data.dataset_presets import DATA_PRESETS, data_preset
from dctdiff.data.image_decoding import DEFAULT_MAX_PIXELS
from dctdiff.data.prepare_job import PREPARE_COLOURS, PrepareConfig, run_prepare
from dctdiff.data.shards import DTYPES
from dctdiff.data.sources import PREPARE, describe_sources, source_forms
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging, show_progress
from dctdiff.infra.ray_cluster import ResourceError, environment


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = flags.job_parser("dctdiff prepare", f"{__doc__}\nsources:\n{describe_sources(PREPARE)}")
    parser.add_argument("--source", required=True, help=source_forms(PREPARE))
    parser.add_argument("--output", required=True, help="output folder or URI")
    parser.add_argument("--preset", choices=sorted(DATA_PRESETS), help="the paper's resolution and block size")
    parser.add_argument("--resolution", type=int, help="image side R (instead of --preset)")
    parser.add_argument("--block-size", type=int, help="DCT block size B (instead of --preset)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="coefficient dtype")
    parser.add_argument(
        "--colour", choices=PREPARE_COLOURS, default=AUTO_COLOUR,
        help="ycbcr420 (Y x4, Cb, Cr per token) or grey (Y only); auto: grey for single-channel sources "
        "(fashion-mnist), else ycbcr420",
    )  # fmt: skip
    parser.add_argument(
        "--store-pixels", action="store_true",
        help="also store the source pixels (for `dctdiff train --space pixel`)",
    )  # fmt: skip
    parser.add_argument("--stats-sample", type=float, default=1.0, help="fraction of images feeding stats.json")
    parser.add_argument("--upscale", action="store_true", help="enlarge images smaller than R, do not reject them")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images (decompression bombs)"
    )
    parser.add_argument("--limit", type=int, help="only the first N images (photos: how many crops, default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="photos crops and --stats-sample selection")
    parser.add_argument("--split", choices=["train", "test"], help="cifar10 / fashion-mnist split (default train)")
    parser.add_argument("--unlabeled", action="store_true", help="folder: ignore class subfolders")
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="folder: keep only the first (by path) of files with identical content (read on the driver)",
    )
    parser.add_argument("--shard-rows", type=int, help="rows per Parquet shard (default: about 64 MiB, at most 2048)")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous preparation in OUT and start over")
    flags.add_ray_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    flags.add_dry_run_flag(parser)
    flags.add_logging_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> PrepareConfig:
    """Validate the flags into a PrepareConfig; a bad combination exits with a message."""
    crop_box = None
    if args.preset:
        if args.resolution is not None or args.block_size is not None:
            parser.error("give either --preset or --resolution and --block-size, not both")
        preset = data_preset(args.preset)
        resolution, block_size, crop_box = preset.resolution, preset.block_size, preset.crop_box
    elif args.resolution is None or args.block_size is None:
        parser.error(f"give --preset ({', '.join(DATA_PRESETS)}) or both --resolution and --block-size")
    else:
        resolution, block_size = args.resolution, args.block_size
    try:
        config = PrepareConfig(
            source=args.source,
            output=args.output,
            resolution=resolution,
            block_size=block_size,
            dtype=args.dtype,
            crop_box=crop_box,
            stats_sample=args.stats_sample,
            upscale=args.upscale,
            max_pixels=args.max_pixels,
            limit=args.limit,
            seed=args.seed,
            split=args.split,
            unlabeled=args.unlabeled,
            dedupe=args.dedupe,
            shard_rows=args.shard_rows,
            overwrite=args.overwrite,
            progress=not args.no_progress and show_progress(),
            colour=args.colour,
            store_pixels=args.store_pixels,
        )
    except ValueError as error:
        parser.error(str(error))
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (bad arguments exit with status 2 and a message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(flags.log_level(args))
    config = config_from_args(args, parser)
    if args.dry_run:
        return flags.print_dry_run("prepare", {**asdict(config), "address": args.address})
    try:
        storage.check_writable(config.output)
    except ValueError as error:
        return flags.report_error(str(error))
    try:
        with environment({"RAY_ADDRESS": args.address} if args.address else {}):  # read by init_ray
            run_prepare(config)
    except ValueError as error:
        parser.error(str(error))
    except ResourceError as error:  # Ray did not start, or the --address did not answer
        return flags.report_error(str(error))
    except RuntimeError as error:
        return flags.report_error(str(error), status=1)
    return 0
