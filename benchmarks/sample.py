"""Sampling throughput: DCT vs pixel U-ViT of equal width and depth at NFE 50, and Inception feature
extraction, in one run.

    python -m benchmarks.sample [--part all|rate|host] [--images 16] [--nfe 50] [--embed-dim 256] [--depth 8]
                                [--device cuda] [--repeats 10]

Both models sample 32x32 images with DPM-Solver++ 2M through ``dctdiff.core.generation.generate_images``
(DCT: B = 2, keep = 4, 64 tokens of dim 24; pixel: P = 2, 256 tokens of dim 12); the table gives
images/s and the DCT/pixel ratio, and the Inception row the rate of the FID feature extractor.
``--part host``: the host time per step of the sampler's noise before vs after drawing it on the device
(``benchmarks.sampler_host``, at the cifar10 and ffhq256 shapes).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.sampler_host import sampler_host_table
from dctdiff.core.codec import DCTCodec, PixelCodec
from dctdiff.core.generation import generate_images
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.uvit import UViT
from dctdiff.evaluation.fid import extract_features, load_inception


def images_per_second(fn, count: int, sync) -> float:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--part", choices=("all", "rate", "host"), default="all", help="which table(s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per host-time cell (median)")
    args = parser.parse_args()
    if args.part in ("all", "host"):
        print("host time per Euler-Maruyama step for the noise (one CPU thread):")
        print(sampler_host_table(args.repeats))
    if args.part == "host":
        return
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    schedule = VPSchedule(snr_scale=4.0)
    seeds = list(range(args.images))
    rows = []
    for name, codec in (("DCT B=2 keep=4", DCTCodec(32, 2, 4, 242.0)), ("pixel P=2", PixelCodec(32, 2))):
        torch.manual_seed(0)
        model = UViT(codec.token_dim, codec.num_tokens, args.embed_dim, args.depth, args.heads).to(device).eval()
        rate = images_per_second(
            lambda: generate_images(model, codec, schedule, seeds, "dpm++2m", args.nfe, device=device), len(seeds), sync
        )
        rows.append((f"sample {name} ({codec.num_tokens} tokens), NFE {args.nfe}", rate))
    images = generate_images(model, codec, schedule, seeds, "dpm++2m", 2, device=device).numpy()
    inception = load_inception(device=str(device))
    rows.append(
        (
            "Inception-v3 features (FID)",
            images_per_second(lambda: extract_features(images, inception, 16), len(images), sync),
        )
    )

    print(f"device={device} threads={torch.get_num_threads()} U-ViT width {args.embed_dim} depth {args.depth}")
    print(f"{'what':<48}{'images/s':>10}{'vs DCT':>8}")
    for what, rate in rows:
        print(f"{what:<48}{rate:>10.2f}{rate / rows[0][1]:>8.2f}")


if __name__ == "__main__":
    main()
