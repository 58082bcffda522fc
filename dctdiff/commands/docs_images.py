"""`make docs-images`: the pictures the README shows, as small PNGs in docs/, from a finished demo
(and `make docs-study-images` from a finished `make study`).

    python -m dctdiff.commands.docs_images --demo outputs/demo --output docs
    python -m dctdiff.commands.docs_images --study outputs/study/sweeps/dct_vs_pixel-demo-... --output docs

From the demo: samples.png (its first 64 samples, from DEMO/samples/images.npz), codec_grid.png (photo
crops round-tripped with B = 2 and B = 4, one labelled row per block size and keep) and reconstruction.png
(DEMO/reconstruction/reconstruction.png, downscaled). From a study's sweep folder: study_curves.png
(STUDY/study_curves.png, downscaled) and study_grids.png (STUDY/study_grids.png: each arm's samples at
equal steps). Each PNG is palette-compressed to at most --max-kb kilobytes.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dctdiff.commands import options as flags
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.evaluation.codec_grid import SHOWN_KEEPS, codec_grid, round_trips
from dctdiff.evaluation.image_grid import enlarged, sample_grid
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.tuning.study_report import CURVES_FILE, GRIDS_FILE

log = logging.getLogger("dctdiff.docs_images")  # also when run as __main__

SHRINK = 0.8  # each retry of a PNG over budget is this much smaller


def compressed_png(picture: Image.Image, max_bytes: int) -> bytes:
    """``picture`` as a 256-colour PNG, shrunk until it fits in ``max_bytes``."""
    while True:
        buffer = io.BytesIO()
        picture.convert("RGB").quantize(colors=256).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes or min(picture.size) < 64:
            return buffer.getvalue()
        picture = picture.resize((int(picture.width * SHRINK), int(picture.height * SHRINK)), Image.Resampling.LANCZOS)


def write_png(picture: Image.Image, path: Path, max_bytes: int) -> None:
    """Write ``picture`` compressed (:func:`compressed_png`) and log its size."""
    data = compressed_png(picture, max_bytes)
    path.write_bytes(data)
    log.info("wrote %s (%d KB)", path, len(data) // 1024)


def samples_picture(npz: Path) -> Image.Image:
    """The demo's first 64 samples, 8 per row, enlarged twice."""
    with np.load(npz) as archive:
        return enlarged(Image.fromarray(sample_grid(archive["images"])), 2)


def codec_picture() -> Image.Image:
    """Four photo crops round-tripped with B = 2 and B = 4 (rows of SHOWN_KEEPS), labelled."""
    originals = photo_crops(4, 64, seed=0)
    return Image.fromarray(codec_grid(originals, round_trips(originals, tuple(SHOWN_KEEPS), SHOWN_KEEPS)))


def plot_picture(png: Path, width: int = 800) -> Image.Image:
    """A plot (the demo's reconstruction plot, a study's curves), at most ``width`` pixels wide."""
    with Image.open(png) as plot:
        if plot.width <= width:
            return plot.convert("RGB")
        return plot.convert("RGB").resize((width, round(plot.height * width / plot.width)), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    """Write the docs' PNGs; 2 with one line when the demo's outputs are missing."""
    parser = flags.job_parser("python -m dctdiff.commands.docs_images", __doc__)
    parser.add_argument("--demo", type=Path, help="a finished `dctdiff demo` output (default: outputs/demo)")
    parser.add_argument("--study", type=Path, help="a finished study's sweep folder (its study_curves.png)")
    parser.add_argument("--output", type=Path, default=Path("docs"), help="folder for the PNGs")
    parser.add_argument("--max-kb", type=flags.positive_int, default=150, help="largest PNG size in kilobytes")
    flags.add_logging_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(flags.log_level(args))
    demo = args.demo or (None if args.study else Path("outputs/demo"))
    inputs = {}
    if demo is not None:
        inputs.update(samples=demo / "samples" / "images.npz", plot=demo / "reconstruction" / "reconstruction.png")
    if args.study is not None:
        inputs.update(curves=args.study / CURVES_FILE, grids=args.study / GRIDS_FILE)
    missing = [str(path) for path in inputs.values() if not path.is_file()]
    try:
        if missing:
            raise ValueError(
                f"{', '.join(missing)} missing; run `make demo` / `make study` (or give --demo / --study) first"
            )
        storage.check_writable(str(args.output))
    except ValueError as error:
        return flags.report_error(str(error))
    budget = args.max_kb * 1000
    if demo is not None:
        write_png(samples_picture(inputs["samples"]), args.output / "samples.png", budget)
        write_png(codec_picture(), args.output / "codec_grid.png", budget)
        write_png(plot_picture(inputs["plot"]), args.output / "reconstruction.png", budget)
    if args.study is not None:
        write_png(plot_picture(inputs["curves"], width=1000), args.output / CURVES_FILE, budget)
        write_png(plot_picture(inputs["grids"], width=1000), args.output / GRIDS_FILE, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
