"""Codec throughput: the vectorised DCTCodec against the plain per-block reference, in one run.

    python -m benchmarks.codec [--device cuda] [--threads 1] [--batch 256]

Prints encode/decode images/s for each setting and the speed-up over the reference
(tests/codec_reference.py: per-block scipy DCT loops, explicit colour formulas).
"""

from __future__ import annotations

import argparse
import time

import torch

from dctdiff.core.codec import DCTCodec
from dctdiff.data.bundled_photos import photo_crops
from tests import codec_reference as ref

SETTINGS = [(32, 2, 4), (64, 2, 4), (256, 4, 9)]  # (resolution, block size, keep): cifar10, celeba64, ffhq256-like


def images_per_second(fn, n_images: int, min_seconds: float, sync=lambda: None) -> float:
    """Repeat ``fn`` (which handles ``n_images``) for at least ``min_seconds``; return images/s."""
    fn()
    sync()
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        sync()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return runs * n_images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the target is set for 1)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reference-images", type=int, default=4, help="images timed through the slow reference")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    rows = []
    for resolution, block, keep in SETTINGS:
        codec = DCTCodec(resolution, block, keep, eta=242.0)
        batch = args.batch if resolution <= 64 else max(1, args.batch // 16)
        images = torch.from_numpy(photo_crops(batch, resolution, seed=0)).to(device)
        tokens = codec.encode(images)
        encode = images_per_second(lambda: codec.encode(images), batch, args.seconds, sync)
        decode = images_per_second(lambda: codec.decode(tokens), batch, args.seconds, sync)
        few = images[: args.reference_images].cpu().numpy()
        few_tokens = tokens[: args.reference_images].double().cpu().numpy()
        ref_encode = images_per_second(
            lambda: [ref.encode_image(im, block, keep, 242.0) for im in few], len(few), args.seconds
        )
        ref_decode = images_per_second(
            lambda: [ref.decode_image(t, resolution, resolution, block, keep, 242.0) for t in few_tokens],
            len(few),
            args.seconds,
        )
        rows.append((f"{resolution}x{resolution} B={block} keep={keep}", batch, encode, ref_encode, decode, ref_decode))

    print(f"device={device} threads={args.threads} torch={torch.__version__}")
    header = f"{'setting':<24}{'batch':>6}{'encode img/s':>15}{'ref enc':>10}{'x':>8}{'decode img/s':>15}{'ref dec':>10}{'x':>8}"
    print(header)
    print("-" * len(header))
    for name, batch, enc, renc, dec, rdec in rows:
        print(
            f"{name:<24}{batch:>6}{enc:>15,.0f}{renc:>10,.1f}{enc / renc:>8,.0f}{dec:>15,.0f}{rdec:>10,.1f}{dec / rdec:>8,.0f}"
        )


if __name__ == "__main__":
    main()
