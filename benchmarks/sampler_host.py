"""Host time per sampling step for the noise of Euler-Maruyama, before vs after drawing it on the device,
in one run, next to the modelled H100 time of the step's network evaluation (GitHub issue 23, bullet 1).

    python -m benchmarks.sample --part host [--repeats 10]

- before: the sampler as it was when the issue was filed: one ``torch.Generator`` per image, seeded from
  its seed, each image's noise drawn on the CPU and stacked, then a blocking pageable copy to the GPU (the
  copy is not counted, so "before" is a lower bound). On a GPU all of it is host time the step waits for.
- after: ``counter_rng.SeedNoise`` draws the same-sized noise with device ops; the host only dispatches
  them. Their host cost is the dispatch of the same op sequence measured on the CPU for one image with a
  1x2 draw (compute negligible), plus one kernel launch per op at ``host_path.LAUNCH_US`` (ops counted).

The modelled step is the analytic forward matmul FLOPs (``benchmarks.model.forward_flops``) of the preset's
U-ViT for the batch at ``host_path.MODELLED_TFLOPS``.
"""

from __future__ import annotations

import torch

from benchmarks.host_path import LAUNCH_US, MODELLED_TFLOPS, OpCounter, median_ms
from benchmarks.model import forward_flops
from dctdiff.core.counter_rng import SeedNoise
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import build_config

SHAPES = (("cifar10", 256), ("ffhq256", 256))  # preset, images per sampling batch


def before_noise(seeds: list[int], shape: tuple[int, int]) -> torch.Tensor:
    """The issue-time per-step noise: a CPU generator per image -> [N, L, D] on the host."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def sampler_host_rows(repeats: int) -> list[dict[str, float | str]]:
    """One row per shape on one CPU thread: before, after (dispatch + modelled launches), modelled network."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    for preset, batch in SHAPES:
        config = build_config(preset)
        codec = build_codec(config, eta=config.data.eta or 1.0)
        shape = (codec.num_tokens, codec.token_dim)
        seeds = list(range(batch))
        noise = SeedNoise(seeds[:1], "cpu")
        with OpCounter() as counter:
            noise(1, (1, 2))
        after = median_ms(lambda: noise(1, (1, 2)), repeats) + counter.ops * LAUNCH_US / 1e3
        with torch.device("meta"):
            model = build_model(config, codec)
        rows.append({
            "shape": f"{preset} {shape[0]}x{shape[1]}, batch {batch}",
            "before": median_ms(lambda: before_noise(seeds, shape), repeats),
            "after": after, "ops": counter.ops,
            "step": 1e3 * forward_flops(model.config) * batch / (MODELLED_TFLOPS * 1e12),
        })  # fmt: skip
    torch.set_num_threads(threads)
    return rows


def sampler_host_table(repeats: int) -> str:
    """The Markdown table of ``sampler_host_rows``."""
    lines = [
        "| shape | before: host ms/step | after: host ms/step (ops) | modelled H100 network ms/step "
        "| before / step | after / step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sampler_host_rows(repeats):
        lines.append(
            f"| {r['shape']} | {r['before']:.1f} | {r['after']:.3f} ({r['ops']}) | {r['step']:.1f} | "
            f"{100 * r['before'] / r['step']:.0f}% | {100 * r['after'] / r['step']:.2f}% |"
        )
    return "\n".join(lines)
