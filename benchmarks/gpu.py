"""GPU check without Ray or MLflow: codec, training step and sampling throughput, as one Markdown table.

    make gpu-wheels                                   # here: the few wheels it needs besides torch (17 MiB)
    pip install --no-index --find-links .gpu-wheels numpy pyyaml safetensors tqdm && \
        python -m benchmarks.gpu --output gpu.md      # on one H100/H200 with PyTorch: about 5 minutes
    python -m benchmarks.gpu --quick --device cpu     # smoke test of the script itself (tiny model; in the suite)

It imports only torch, numpy, pyyaml, safetensors, tqdm and this repository (no Ray, MLflow or pyarrow).
Rows: DCT codec encode/decode images/s (32x32); ``Trainer.train_step`` images/s and MFU of the paper presets
(cifar10: UViT-M on 64x24 DCT tokens; ffhq256: 1024x48) and of their pixel baselines, in bf16, eager and
compiled; sampling images/s in bf16 and fp32. MFU is 3x the analytic forward matmul FLOPs per image
(benchmarks.model.forward_flops) over the device's dense bf16 peak. Each row is logged as it finishes and the
table file is rewritten after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch

from benchmarks.model import PEAK_BF16_TFLOPS, forward_flops
from dctdiff.core.codec import DCTCodec
from dctdiff.core.generation import generate_images
from dctdiff.training.config import build_config
from dctdiff.training.trainer import Batch, Trainer, build_codec, build_model, build_noise_schedule

log = logging.getLogger("benchmarks.gpu")


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


def codec_rows(device: torch.device, batch: int, repeats: int) -> list[tuple[str, float, str]]:
    """Encode and decode images/s of the cifar10 codec."""
    codec = DCTCodec(32, 2, 4, 242.0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device)
    tokens = codec.encode(images)
    return [
        ("codec encode 32x32", images_per_second(lambda: codec.encode(images), batch, device, repeats), ""),
        ("codec decode 32x32", images_per_second(lambda: codec.decode(tokens), batch, device, repeats), ""),
    ]


def training_row(preset: str, overrides: list[str], batch: int, device: torch.device, repeats: int, peak: float | None):
    """(name, images/s, MFU) of train_step for one preset (bf16 autocast on CUDA)."""
    config = build_config(preset, overrides=[f"optim.batch_size={batch}", *overrides])
    codec = build_codec(config, eta=config.data.eta or 1.0)
    trainer = Trainer(config, codec, build_model(config, codec), None, device)
    tokens = torch.randn(batch, codec.num_tokens, codec.token_dim).clamp(-1, 1).to(torch.float16)
    ids = [f"img-{i}" for i in range(batch)]
    rate = images_per_second(lambda: trainer.train_step(Batch(tokens, None, ids)), batch, device, repeats)
    mfu = f"{100 * 3 * forward_flops(trainer.model.config) * rate / (peak * 1e12):.1f}%" if peak else ""
    mode = "compiled" if config.model.compile else "eager"
    name = f"train {preset} {config.data.space} {config.model.size} {mode} {codec.num_tokens}x{codec.token_dim} b{batch}"
    return name, rate, mfu


def sampling_rows(device: torch.device, batch: int, nfe: int, overrides: list[str]) -> list[tuple[str, float, str]]:
    """Sampling images/s of the cifar10 model (random weights) in bf16 and fp32."""
    config = build_config("cifar10", overrides=overrides)
    codec = build_codec(config, eta=config.data.eta or 1.0)
    model, schedule = build_model(config, codec).to(device).eval(), build_noise_schedule(config)
    rows = []
    for precision in ("bf16", "fp32"):

        def run(precision: str = precision) -> None:
            generate_images(model, codec, schedule, range(batch), nfe=nfe, device=device, batch_size=batch,
                            precision=precision)  # fmt: skip

        rows.append((f"sample cifar10 {precision} nfe {nfe}", images_per_second(run, batch, device, 1), ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of this script)")
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default by GPU name)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    quick = args.quick
    tiny = ["model.size=tiny", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"] if quick else []
    repeats = 2 if quick else 20
    title = f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    rows: list[tuple[str, float, str]] = []

    def add(new: list[tuple[str, float, str]]) -> None:
        rows.extend(new)
        for name, rate, mfu in new:
            log.info("%s: %.1f images/s %s", name, rate, mfu)
        if args.output:
            with open(args.output, "w") as handle:
                handle.write(markdown(title, rows) + "\n")

    add(codec_rows(device, 64 if quick else 65536, repeats))
    shapes = [("cifar10", 8 if quick else 256), ("ffhq256", 2 if quick else 32)]
    for compile_ in ([False] if quick or args.no_compile else [False, True]):
        flags = [*tiny, *(["model.compile=true"] if compile_ else [])]
        for preset, batch in shapes:
            for space in ("dct", "pixel"):
                add([training_row(preset, [*flags, f"data.space={space}"], batch, device, repeats, peak)])
    add(sampling_rows(device, 8 if quick else 256, 2 if quick else 10, tiny))
    print(markdown(title, rows))


def markdown(title: str, rows: list[tuple[str, float, str]]) -> str:
    """The table of ``rows`` under ``title``."""
    table = ["| measurement | images/s | MFU |", "|---|---:|---:|"]
    table += [f"| {name} | {rate:,.1f} | {mfu} |" for name, rate, mfu in rows]
    return "\n".join([title, "", *table])


if __name__ == "__main__":
    main()
