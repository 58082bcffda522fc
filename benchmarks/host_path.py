"""Host time per training step on the critical path, before vs after moving the host work off it, in one
run, next to the modelled H100 step time of the same batch (GitHub issue 12, bullet 7).

    python -m benchmarks.train --part host [--repeats 20]

"Critical path" is everything a step does outside the model's forward/backward and the optimiser
kernels that the next GPU step has to wait for.

- before: the loop as it was when the issue was filed, on the step's own thread: the shard rows copied and
  turned into float32 tokens on the CPU (keep m, divide by eta), the ids listed one by one, one blake2b
  hash, ``torch.Generator`` and ``randn`` per sample, then flip and label dropout. Its pageable copies to
  the GPU and its 11 ``.item()`` syncs per step are not counted, so "before" is a lower bound.
- after: the step's own thread only dispatches the device work of the draws (``draw_step``), the flip
  and the label dropout, and the step's metric vector. Their host cost is the dispatch of the same op
  sequence measured on the CPU for one sample with a 1x2 token draw (compute negligible), plus one kernel
  launch per op on a GPU, modelled at ``LAUNCH_US`` (the ops are counted). The rows' copy, the id keys, the pinned copies and the token conversion run
  in the prefetch thread (``device_batches.batch_from_rows`` under ``prefetched``) while the previous step
  computes; their CPU time is shown as "prefetch thread" (overlapped as long as it is below the step).

The modelled step is 3x the analytic forward matmul FLOPs (``benchmarks.model.forward_flops``) of UViT-M at
the preset's token shape times the batch, at ``MODELLED_TFLOPS`` (about 40% of an H100's dense bf16 peak).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.model import forward_flops
from dctdiff.core.codec import Codec
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import TrainConfig, build_config
from dctdiff.training.device_batches import batch_from_rows
from dctdiff.training.randomness import draw_step, id_keys

MODELLED_TFLOPS = 400.0  # achieved bf16 TFLOP/s assumed for UViT-M on one H100
LAUNCH_US = 5.0  # host cost of one CUDA kernel launch, beyond the dispatch measured on the CPU
SHAPES = (("cifar10", 256), ("ffhq256", 32))  # preset, per-worker batch


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it (each one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def shard_rows(config: TrainConfig, codec: Codec, batch: int) -> dict[str, np.ndarray]:
    """A worker's rows as ``batch_order.worker_batches`` gives them: string ids, float16 coefficients, int labels."""
    rng = np.random.default_rng(0)
    shape = (batch, codec.num_tokens, codec.layout.blocks_per_token, config.data.block_size**2)
    return {
        "id": np.array([f"{config.preset}/train/{i:06d}.png" for i in range(batch)], dtype=object),
        "coefficients": rng.normal(0, 100, shape).astype(np.float16),
        "label": rng.integers(0, 10, batch),
    }


def before_step(rows: dict[str, np.ndarray], config: TrainConfig, codec: Codec, step: int) -> None:
    """The issue-time host work of one step (trainer.py and worker_loop.py before commit 5d14df9)."""
    coefficients = torch.from_numpy(np.array(rows["coefficients"]))
    x0 = codec.tokens_from_coefficients(coefficients).to(torch.float32)  # on the CPU
    ids = [str(i) for i in rows["id"]]
    t, eps, uniforms = [], [], []
    for sample_id in ids:
        digest = hashlib.blake2b(f"{config.cadence.seed}:{step}:{sample_id}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        u = torch.rand(3, generator=generator)  # t, flip, label drop
        t.append(u[0])
        uniforms.append(u[1:])
        eps.append(torch.randn(codec.num_tokens, codec.token_dim, generator=generator))
    u = torch.stack(uniforms)  # [n, 2]
    torch.stack(t)  # [n]
    torch.stack(eps)  # [n, L, D]
    torch.where(u[:, 0][:, None, None] < 0.5, codec.hflip_tokens(x0), x0)
    labels = torch.from_numpy(rows["label"].astype(np.int64))
    torch.where(u[:, 1] < config.data.label_dropout, torch.full_like(labels, 10), labels)


def after_step(keys: torch.Tensor, x0: torch.Tensor, labels: torch.Tensor, config: TrainConfig, codec: Codec,
               draw_shape: tuple[int, int], step: int) -> None:  # fmt: skip
    """What the step's own thread still does outside the model (Trainer.train_step), on ``keys.device``."""
    draws = draw_step(config.cadence.seed, step, keys, draw_shape, keys.device)
    torch.where(draws.flip[:, None, None], codec.hflip_tokens(x0), x0)
    torch.where(draws.drop < config.data.label_dropout, torch.full_like(labels, 10), labels)
    bands = torch.stack([torch.zeros((), device=keys.device)] * 6)
    torch.cat([x0.new_zeros(1), x0.new_zeros(1), bands])  # the step's metric vector [K]


def median_ms(run: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``run`` in milliseconds, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def modelled_step_ms(config: TrainConfig, codec: Codec, batch: int) -> float:
    """3x forward FLOPs of the preset's U-ViT for ``batch`` images at MODELLED_TFLOPS, in milliseconds."""
    with torch.device("meta"):
        model = build_model(config, codec)
    return 1e3 * 3 * forward_flops(model.config) * batch / (MODELLED_TFLOPS * 1e12)


def host_rows(repeats: int) -> list[dict[str, float | str]]:
    """One row per shape: before, after (dispatch + modelled launches), prefetch thread, modelled step."""
    rows = []
    for preset, batch in SHAPES:
        config = build_config(preset, overrides=[f"optim.batch_size={batch}"])
        codec = build_codec(config, eta=config.data.eta or 1.0)
        shard = shard_rows(config, codec, batch)
        one = (id_keys(shard["id"][:1]), torch.zeros(1, codec.num_tokens, codec.token_dim), torch.zeros(1).long())
        with OpCounter() as counter:
            after_step(*one, config, codec, (1, 2), 1)
        dispatch = median_ms(lambda: after_step(*one, config, codec, (1, 2), 1), repeats)
        after = dispatch + counter.ops * LAUNCH_US / 1e3
        cpu = torch.device("cpu")
        prefetch = median_ms(lambda: batch_from_rows(shard, config, codec, "coefficients", cpu), repeats)
        rows.append({
            "shape": f"{preset} {codec.num_tokens}x{codec.token_dim}, batch {batch}",
            "before": median_ms(lambda: before_step(shard, config, codec, 1), repeats),
            "after": after, "ops": counter.ops, "prefetch": prefetch,
            "step": modelled_step_ms(config, codec, batch),
        })  # fmt: skip
    return rows


def host_table(repeats: int) -> str:
    """The Markdown table of ``host_rows``."""
    lines = [
        "| shape | before: host ms/step | after: host ms/step (ops) | prefetch thread ms | modelled H100 step ms "
        "| before / step | after / step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in host_rows(repeats):
        lines.append(
            f"| {r['shape']} | {r['before']:.2f} | {r['after']:.2f} ({r['ops']}) | {r['prefetch']:.2f} | "
            f"{r['step']:.1f} | {100 * r['before'] / r['step']:.0f}% | {100 * r['after'] / r['step']:.1f}% |"
        )
    return "\n".join(lines)
