"""`dctdiff demo` (`make demo`): the whole pipeline on offline photo crops, on a laptop CPU in about 10-15 minutes.

1. codec: round-trip 64x64 crops keeping 1..4 (B = 2) and 1, 2, 4, 8, 16 (B = 4) frequencies, print PSNR,
   write codec_grid.png;
2. prepare: 2000 32x32 crops of the bundled photos -> Parquet DCT shards + stats.json (Ray Data);
3. train: the `demo` preset (tiny U-ViT, SNR scale 4, EBFR) with Ray Train, tracked in MLflow;
4. sample: images from the final EMA weights (Ray actors) -> samples.png;
5. evaluate: FID of the samples against the training crops, and the reconstruction table (rFID, PSNR per keep);
6. print where the MLflow run is and the `mlflow ui` command to review it.

Everything lands in --output (default outputs/demo); re-running reuses the prepared data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dctdiff.commands import options as flags
from dctdiff.commands import prepare_command
from dctdiff.commands.train_command import parse_args as parse_train_args
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.evaluation.codec_grid import SHOWN_KEEPS, codec_grid, psnr_table, round_trips
from dctdiff.evaluation.evaluate_job import run_fid, run_reconstruction
from dctdiff.evaluation.image_grid import sample_grid, save_png
from dctdiff.evaluation.sample_job import SamplingSpec
from dctdiff.evaluation.sample_job import run as run_sampling
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.mlflow_runs import RunHandle
from dctdiff.infra.mlflow_tracking import TrackingOptions, resolve_tracking_uri, review_hint
from dctdiff.training.train_job import train

log = logging.getLogger(__name__)


def codec_demo(output: Path, n_images: int = 8, resolution: int = 64) -> Path:
    """Round-trip photo crops through the codec for each block size and keep of SHOWN_KEEPS; print PSNR;
    save the labelled grid (one row per block size and keep)."""
    originals = photo_crops(n_images, resolution, seed=0)
    rows = round_trips(originals, tuple(SHOWN_KEEPS), SHOWN_KEEPS)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "codec_grid.png"
    save_png(codec_grid(originals, rows, scale=2), str(path))
    log.info("%s", psnr_table(rows))
    log.info("wrote %s (row 1: originals; then one labelled row per block size and keep)", path)
    return path


def banner(text: str) -> None:
    """A step heading in the demo's output."""
    log.info("\n=== %s ===", text)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = flags.job_parser("dctdiff demo", __doc__)
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--images", type=int, default=2000, help="photo crops to train on")
    parser.add_argument("--steps", type=int, help="training steps (default: the demo preset's)")
    parser.add_argument("--samples", type=int, default=400, help="images to sample for the FID")
    parser.add_argument("--fid-reference", type=int, default=400, help="training crops the FID compares against")
    parser.add_argument("--reconstruction-images", type=int, default=50)
    flags.add_logging_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(flags.log_level(args))
    out = args.output.resolve()
    started = time.perf_counter()

    banner("1/5 codec round trip (64x64 crops)")
    codec_demo(out)

    banner(f"2/5 prepare {args.images} photo crops (32x32, B=2) with Ray Data")
    data = out / "data"
    status = prepare_command.main(
        ["--source", "photos", "--preset", "demo", "--limit", str(args.images), "--output", str(data)]
    )
    if status:
        return status

    banner("3/5 train the demo preset with Ray Train")
    tracking_uri = resolve_tracking_uri(f"sqlite:///{out}/mlflow.db")
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    train_args = ["--preset", "demo", "--data", str(data), "--storage", str(out / "runs"), "--name", name,
                  "--mlflow-uri", tracking_uri]  # fmt: skip
    if args.steps:
        train_args += ["--max-steps", str(args.steps)]
    request = parse_train_args(train_args + ["--log-level", flags.log_level(args)])
    result, run_id = train(request.config, request.options, request.tracking)

    banner(f"4/5 sample {args.samples} images from the EMA weights")
    spec = SamplingSpec(result.checkpoint.path)  # the run's sampler and NFE
    samples = run_sampling(spec, args.samples, str(out / "samples"))
    grid = out / "samples.png"
    save_png(sample_grid(samples), str(grid), scale=3)
    RunHandle(tracking_uri, run_id).log_file(grid, "demo")
    log.info("wrote %s", grid)

    banner("5/5 evaluate: FID against the training crops, reconstruction table")
    tracking = TrackingOptions(uri=tracking_uri, run_id=run_id)
    fid = run_fid([str(out / "samples" / "images.npz"), str(data)], tracking=tracking,
                  limit=args.fid_reference, step=int(result.metrics["step"]))  # fmt: skip  # at the training step
    rows, chosen = run_reconstruction(str(data), block_size=request.config.data.block_size, tracking=tracking,
                                               limit=args.reconstruction_images, output=str(out / "reconstruction"))  # fmt: skip

    banner("done")
    log.info("samples:        %s", grid)
    log.info("FID (%d samples vs %d training crops): %.2f", args.samples, args.fid_reference, fid)
    log.info("reconstruction: %s", ", ".join(f"keep {r.keep}: rFID {r.rfid:.2f} / {r.psnr:.1f} dB" for r in rows))
    log.info("MLflow run %s (%s) in %s", run_id, name, tracking_uri)
    log.info("%s", review_hint(tracking_uri, run_id))
    log.info("total %.1f min", (time.perf_counter() - started) / 60)
    return 0
