"""Training-step throughput of the same U-ViT on DCT tokens vs pixel patches, in one run.

    python -m benchmarks.model                       # CPU: width 256, depth 8, 4 heads, batch 8
    python -m benchmarks.model --device cuda         # GPU: U-ViT-S, batch 128, bf16 autocast, MFU

One training step = forward + backward + AdamW on the eps-prediction loss; DCT and pixel steps are
timed interleaved and the median step time is reported, so a busy machine affects both alike. DCT: B = 2, keep = 4
(token dim 24, one token per 4x4 pixels); pixels: P = 2 patches (token dim 12, one token per 2x2),
the paper's pixel U-ViT baseline. Same width and depth for both, at 32x32 and 64x64. The paper's
efficiency claim (4x fewer tokens) predicts a per-image speed-up of at least 3.5x for DCT.

On a GPU the table adds achieved TFLOP/s and model-FLOPs utilisation (MFU): 3x the analytic forward
matmul FLOPs per step divided by the measured time and the device's dense bf16 peak (--peak-tflops).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm import tqdm

from benchmarks.peaks import peak_tflops
from dctdiff.core.codec import DCTCodec, PixelCodec
from dctdiff.core.loss import TokenLoss, diffusion_loss
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.uvit import MODEL_SIZES, UViT, UViTConfig, build_uvit

CPU_DEFAULTS = dict(embed_dim=256, depth=8, num_heads=4, batch=8, steps=4)
GPU_DEFAULTS = dict(embed_dim=None, depth=None, num_heads=None, batch=128, steps=20)


def forward_flops(cfg: UViTConfig) -> float:
    """Matmul FLOPs of one image's forward pass (2 per multiply-add; norms and softmax ignored)."""
    extras = 2 if cfg.num_classes else 1
    length, d = cfg.num_tokens + extras, cfg.embed_dim
    hidden = int(d * cfg.mlp_ratio)
    per_block = 2 * length * d * (3 * d + d + 2 * hidden) + 2 * 2 * length * length * d  # qkv, proj, mlp; QK^T, AV
    skips = (cfg.depth // 2) * 2 * length * 2 * d * d
    embed = 2 * cfg.num_tokens * cfg.token_dim * d + 2 * length * d * cfg.token_dim
    return (cfg.depth + 1) * per_block + skips + embed


def training_step(model: UViT, batch: int, device: torch.device, bf16: bool) -> Callable[[], None]:
    """A closure running one training step (forward + backward + AdamW) of ``model`` on a fixed batch."""
    cfg = model.config
    loss_fn, schedule = TokenLoss(), VPSchedule(snr_scale=4.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.03, betas=(0.99, 0.99))
    x0 = torch.randn(batch, cfg.num_tokens, cfg.token_dim, device=device).clamp(-1, 1)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = diffusion_loss(model, schedule, x0, loss_fn).per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def median_step_seconds(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds per step of each closure, timed interleaved (A, B, A, B, ...) so that load changes
    on a shared machine hit all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", default="S", choices=sorted(MODEL_SIZES), help="registry size (GPU default S)")
    parser.add_argument("--embed-dim", type=int, help="width override (CPU default 256)")
    parser.add_argument("--depth", type=int, help="depth override (CPU default 8)")
    parser.add_argument("--num-heads", type=int, help="heads override (CPU default 4)")
    parser.add_argument("--batch", type=int, help="images per step (CPU 8, GPU 128)")
    parser.add_argument("--steps", type=int, help="timed steps per model, median reported (CPU 4, GPU 20)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--peak-tflops", type=float, help="device dense bf16 peak for MFU (default by GPU name)")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731
    overrides = {k: pick(k) for k in ("embed_dim", "depth", "num_heads") if pick(k) is not None}
    batch, steps = pick("batch"), pick("steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = args.peak_tflops
    if gpu and peak is None:
        peak = peak_tflops(torch.cuda.get_device_name(device))
    torch.manual_seed(0)

    sync = torch.cuda.synchronize if gpu else (lambda: None)
    results = []
    for res in tqdm(args.resolutions, desc="resolutions"):
        codecs = {"DCT B=2 m=4": DCTCodec(res, 2, 4, eta=242.0), "pixel P=2": PixelCodec(res, 2)}
        models = {
            label: build_uvit(args.size, codec.token_dim, codec.num_tokens, **overrides).to(device)
            for label, codec in codecs.items()
        }
        steps_fns = {label: training_step(model, batch, device, bf16=gpu) for label, model in models.items()}
        seconds = median_step_seconds(steps_fns, steps, args.warmup, sync)
        results += [(res, label, models[label].config, seconds[label]) for label in codecs]
        del models, steps_fns

    cfg = results[0][2]
    device_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"\ndevice={device_name} torch={torch.__version__} precision={'bf16 autocast' if gpu else 'fp32'} "
        f"width={cfg.embed_dim} depth={cfg.depth} heads={cfg.num_heads} batch={batch} steps={steps}"
    )
    header = (
        f"{'res':>5} {'tokens':<14}{'L':>6}{'dim':>5}{'ms/step':>10}{'img/s':>10}{'GFLOP/img':>11}{'DCT speed-up':>14}"
    )
    if gpu:
        header += f"{'TFLOP/s':>9}{'MFU':>7}"
    print(header)
    print("-" * len(header))
    for res, label, c, seconds in results:
        dct_seconds = next(s for r, lab, _, s in results if r == res and lab.startswith("DCT"))
        flops = 3 * forward_flops(c)  # forward + backward (2x forward) per image
        row = (
            f"{res:>5} {label:<14}{c.num_tokens:>6}{c.token_dim:>5}{seconds * 1e3:>10.1f}{batch / seconds:>10.1f}"
            f"{flops / 1e9:>11.2f}{seconds / dct_seconds:>13.2f}x"
        )
        if gpu:
            achieved = flops * batch / seconds / 1e12
            row += f"{achieved:>9.1f}" + (f"{achieved / peak:>7.1%}" if peak else f"{'n/a':>7}")
        print(row)


if __name__ == "__main__":
    main()
