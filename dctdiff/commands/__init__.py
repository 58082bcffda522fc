"""The `dctdiff` command (also `python -m dctdiff` and the scripts in pipelines/ and tune/): one
subcommand per job. Each job's flags live in its ``*_command`` module, imported only when it runs."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("dctdiff.commands.prepare_command", "images -> Parquet DCT shards + stats.json (Ray Data)"),
    "train": ("dctdiff.commands.train_command", "train a U-ViT in DCT or pixel space (Ray Train, MLflow)"),
    "sample": ("dctdiff.commands.sample_command", "generate images from a checkpoint (Ray actors)"),
    "evaluate": (
        "dctdiff.commands.evaluate_command",
        "FID, KID, precision/recall; reconstruction rFID per keep; spectra",
    ),
    "upsample": ("dctdiff.commands.upsample_command", "DCT upsampling of images; comparison with bicubic/Lanczos"),
    "sweep": ("dctdiff.commands.sweep_command", "Ray Tune sweep over training runs, ranked by FID"),
    "demo": ("dctdiff.commands.demo_command", "the whole pipeline on bundled photos, on a laptop CPU"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {description}" for name, (_, description) in SUBCOMMANDS.items()]
    return (
        "usage: dctdiff SUBCOMMAND [FLAGS]   (dctdiff SUBCOMMAND --help for its flags)\n\n"
        "DCTdiff: image diffusion in the block-DCT space, on Ray.\n\nsubcommands:\n" + "\n".join(lines) + "\n"
    )


def run_subcommand(name: str, argv: list[str]) -> int:
    """Run one subcommand with its arguments; returns its exit status."""
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.main(argv)


def main(argv: list[str] | None = None) -> int:
    """`dctdiff SUBCOMMAND ...`; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(
            f"error: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)} (see dctdiff --help)\n"
        )
        return 2
    return run_subcommand(name, rest)
