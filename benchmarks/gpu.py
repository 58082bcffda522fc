"""GPU check without Ray or MLflow: codec, training step and sampling throughput, as one Markdown table.

    make gpu-wheels                                   # here: the few wheels it needs besides torch (17 MiB)
    pip install --no-index --find-links .gpu-wheels numpy pyyaml safetensors tqdm && \
        python -m benchmarks.gpu --output gpu.md      # on one H100/H200 with PyTorch: about 5 minutes
    python -m benchmarks.gpu --quick --device cpu     # smoke test of the script itself (tiny model; in the suite)

It imports only torch, numpy, pyyaml, safetensors, tqdm and this repository (no Ray, MLflow or pyarrow).
Rows: DCT codec encode/decode images/s (32x32); ``Trainer.train_step`` images/s and MFU of the paper presets
(cifar10: UViT-M on 64x24 DCT tokens; ffhq256: 1024x48) and of their pixel baselines, in bf16, eager and
compiled, fed as the worker loop feeds them (shard rows -> ``device_batches.batch_from_rows`` in the
``prefetched`` thread on CUDA: pinned, non-blocking copies, id keys and token conversion on the device);
sampling images/s of every sampler in bf16 and fp32, eager and compiled. MFU is 3x the analytic forward
matmul FLOPs per image (benchmarks.model.forward_flops) over the device's dense bf16 peak
(``benchmarks.peaks``, by exact device name; an unknown device gets no MFU). Each row runs on its own: an
error (e.g. no C compiler for Triton's compiled rows) is logged and tabled, and the next row runs. Each row
is logged as it finishes and the table file is rewritten after every row, so a run cut short keeps what it
measured. The exit status is 1 if a row failed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from benchmarks.model import forward_flops
from benchmarks.peaks import peak_tflops
from dctdiff.core.codec import DCTCodec, PixelCodec
from dctdiff.core.generation import generate_images
from dctdiff.core.samplers import SAMPLERS
from dctdiff.models.builders import build_codec, build_model, build_noise_schedule
from dctdiff.models.config import build_config
from dctdiff.training.device_batches import batch_from_rows
from dctdiff.training.prefetch import prefetched
from dctdiff.training.trainer import Batch, Trainer

log = logging.getLogger("benchmarks.gpu")

Row = tuple[str, float | None, str]  # (measurement, images/s or None when it failed, MFU or the error)


def images_per_second(run: Callable[[], None], images: int, device: torch.device, repeats: int) -> float:
    """Throughput of ``run`` (``images`` per call) after one warm-up call, synchronising the device."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * images / (time.perf_counter() - start)


def codec_rows(device: torch.device, batch: int, repeats: int) -> list[Row]:
    """Encode and decode images/s of the cifar10 codec."""
    codec = DCTCodec(32, 2, 4, 242.0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device)
    tokens = codec.encode(images)
    return [
        ("codec encode 32x32", images_per_second(lambda: codec.encode(images), batch, device, repeats), ""),
        ("codec decode 32x32", images_per_second(lambda: codec.decode(tokens), batch, device, repeats), ""),
    ]


def shard_rows(codec, batch: int) -> tuple[dict[str, np.ndarray], str]:
    """One worker batch as Ray Data hands it to the loop (ids, labels, the stored column) and that column's
    name: float16 coefficients of random images, or their uint8 pixels for the pixel baseline."""
    generator = torch.Generator().manual_seed(0)
    height, width = codec.resolution
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    rows = {"id": np.array([f"img-{i}" for i in range(batch)], dtype=object), "label": np.zeros(batch, np.int32)}
    if isinstance(codec, PixelCodec):
        return {**rows, "pixels": images.numpy()}, "pixels"
    return {**rows, "coefficients": codec.analyze(images).numpy().astype(np.float16)}, "coefficients"


def training_batches(config, codec, batch: int, device: torch.device) -> Iterator[Batch]:
    """Endless batches through the worker loop's own input path (prefetch thread on CUDA, inline on a CPU)."""
    rows, column = shard_rows(codec, batch)
    made = (batch_from_rows(rows, config, codec, column, device) for rows in itertools.repeat(rows))
    return prefetched(made, device=device) if device.type == "cuda" else made


def training_row(preset: str, overrides: list[str], batch: int, device: torch.device, repeats: int,
                 peak: float | None) -> list[Row]:  # fmt: skip
    """(name, images/s, MFU) of train_step for one preset (bf16 autocast on CUDA)."""
    config = build_config(preset, overrides=[f"optim.batch_size={batch}", *overrides])
    codec = build_codec(config, eta=config.data.eta or 1.0)
    trainer = Trainer(config, codec, build_model(config, codec), None, device)
    batches = training_batches(config, codec, batch, device)
    try:
        rate = images_per_second(lambda: trainer.train_step(next(batches)), batch, device, repeats)
    finally:
        batches.close()  # stops the prefetch thread
    mfu = f"{100 * 3 * forward_flops(trainer.model.config) * rate / (peak * 1e12):.1f}%" if peak else ""
    mode = "compiled" if config.model.compile else "eager"
    name = (
        f"train {preset} {config.data.space} {config.model.size} {mode} {codec.num_tokens}x{codec.token_dim} b{batch}"
    )
    return [(name, rate, mfu)]


def sampling_model(overrides: list[str], device: torch.device, compiled: bool):
    """The cifar10 model (random weights), eager or ``torch.compile``d, with its codec and schedule."""
    config = build_config("cifar10", overrides=overrides)
    codec = build_codec(config, eta=config.data.eta or 1.0)
    model = build_model(config, codec).to(device).eval()
    return (torch.compile(model) if compiled else model), codec, build_noise_schedule(config)


def sampling_row(network: Callable[[], tuple], sampler: str, precision: str, mode: str, batch: int, nfe: int,
                 device: torch.device) -> list[Row]:  # fmt: skip
    """Sampling images/s of one sampler at one network precision (``network``: built once, on first use)."""
    model, codec, schedule = network()

    def run() -> None:
        generate_images(model, codec, schedule, range(batch), sampler=sampler, nfe=nfe, device=device,
                        batch_size=batch, precision=precision)  # fmt: skip

    return [(f"sample cifar10 {sampler} {precision} {mode} nfe {nfe}", images_per_second(run, batch, device, 1), "")]


class Table:
    """The rows measured so far under ``title``; ``add`` runs one row on its own, so an error is logged,
    tabled and counted, and the next row still runs; the table file is rewritten after every row."""

    def __init__(self, title: str, output: str | None = None) -> None:
        self.title, self.output = title, output
        self.rows: list[Row] = []
        self.failures = 0

    def add(self, label: str, measure: Callable[[], list[Row]]) -> None:
        """Run ``measure`` (the rows of ``label``) and keep its rows, or one failed row naming the error."""
        try:
            new = measure()
        except Exception as error:  # noqa: BLE001 - one row's failure must not cost the later rows
            detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            log.error("%s failed: %s", label, detail)
            new = [(label, None, f"failed: {detail}")]
            self.failures += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory row leaves its cached blocks behind
        self.rows.extend(new)
        for name, rate, extra in new:
            if rate is not None:
                log.info("%s: %.1f images/s %s", name, rate, extra)
        if self.output:
            with open(self.output, "w") as handle:
                handle.write(self.markdown() + "\n")

    def markdown(self) -> str:
        """The table under its title."""
        table = ["| measurement | images/s | MFU |", "|---|---:|---:|"]
        table += [
            f"| {name} | {'failed' if rate is None else f'{rate:,.1f}'} | {extra} |" for name, rate, extra in self.rows
        ]
        return "\n".join([self.title, "", *table])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of this script)")
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument(
        "--peak-tflops", type=float, help="dense bf16 peak for MFU (default: benchmarks.peaks by GPU name)"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops if args.peak_tflops is not None else (peak_tflops(name) if device.type == "cuda" else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    quick = args.quick
    tiny = ["model.size=tiny", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"] if quick else []
    repeats = 2 if quick else 20
    peak_note = f"dense bf16 peak {peak:g} TFLOP/s" if peak else "peak unknown: no MFU (--peak-tflops gives one)"
    table = Table(f"device: {name}" + (f" ({peak_note})" if device.type == "cuda" else ""), args.output)

    codec_batch = 64 if quick else 65536
    table.add("codec 32x32", lambda: codec_rows(device, codec_batch, repeats))
    shapes = [("cifar10", 8 if quick else 256), ("ffhq256", 2 if quick else 32)]
    modes = [False] if quick or args.no_compile else [False, True]
    for compiled in modes:
        flags = [*tiny, *(["model.compile=true"] if compiled else [])]
        for preset, batch in shapes:
            for space in ("dct", "pixel"):
                table.add(
                    f"train {preset} {space} {'compiled' if compiled else 'eager'}",
                    lambda flags=flags, preset=preset, batch=batch, space=space: training_row(
                        preset, [*flags, f"data.space={space}"], batch, device, repeats, peak
                    ),
                )  # fmt: skip
    batch, nfe = (8, 2) if quick else (256, 10)
    for compiled in modes:
        mode = "compiled" if compiled else "eager"
        network = functools.cache(functools.partial(sampling_model, tiny, device, compiled))  # built in a row
        for sampler in SAMPLERS:
            for precision in ("bf16", "fp32"):
                table.add(
                    f"sample cifar10 {sampler} {precision} {mode} nfe {nfe}",
                    lambda sampler=sampler, precision=precision, mode=mode, network=network: sampling_row(
                        network, sampler, precision, mode, batch, nfe, device
                    ),
                )  # fmt: skip
    print(table.markdown())
    return 1 if table.failures else 0


if __name__ == "__main__":
    sys.exit(main())
