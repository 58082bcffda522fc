"""Training memory per GPU of the paper presets, estimated on a CPU (no GPU needed).

    python -m benchmarks.memory [--gpu-gib 80] [--gpus 1 8]

For each preset: the model state (fp32 weights, gradients, AdamW's two moments and the EMA: 20 bytes per
parameter) plus the tensors autograd keeps for the backward pass, counted with
``torch.autograd.graph.saved_tensors_hooks`` during one bf16-autocast forward of the preset's U-ViT (CPU
autocast; each storage counted once) at batches 2 and 4: their difference is the memory per image, the
rest (the weights' bf16 copies) does not grow with the batch; with and without ``model.grad_checkpoint``. From these it
gives the memory per GPU at the paper's global batch on ``--gpus`` GPUs and the ``optim.micro_batches``
that fits ``--gpu-gib``. An estimate: the CUDA caching allocator, cuDNN/cuBLAS workspaces and NCCL buffers
add a few GiB, and the attention kernel on a GPU (flash / memory-efficient SDPA) keeps no L x L matrix,
while some CPU kernels do; the table labels it so.
"""

from __future__ import annotations

import argparse
import functools
import math

import torch

from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import PRESETS, build_config

STATE_BYTES_PER_PARAM = 4 * 5  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq, EMA copy
PAPER_PRESETS = [name for name in PRESETS if name != "demo"]
GIB = 2**30


@functools.cache
def saved_bytes(preset: str, grad_checkpoint: bool, batch: int) -> int:
    """Bytes autograd saves for backward in one bf16-autocast training forward of ``batch`` images
    (parameters themselves excluded; their bf16 copies, which do not grow with the batch, included)."""
    config = build_config(preset, overrides=[f"model.grad_checkpoint={str(grad_checkpoint).lower()}"])
    codec = build_codec(config, eta=config.data.eta or 1.0)
    model = build_model(config, codec).train()
    tokens = torch.randn(batch, codec.num_tokens, codec.token_dim)  # [N, L, D]
    timesteps = torch.rand(batch) * 999  # [N]
    labels = torch.zeros(batch, dtype=torch.long) if config.data.class_conditional else None
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(tokens, timesteps, labels).float().square().mean()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for ptr, size in storages.items() if ptr not in parameters)


def activation_bytes(preset: str, grad_checkpoint: bool) -> tuple[float, float]:
    """(bytes per image, bytes independent of the batch) of the saved tensors, from batches of 2 and 4."""
    two, four = saved_bytes(preset, grad_checkpoint, 2), saved_bytes(preset, grad_checkpoint, 4)
    per_image = (four - two) / 2
    return per_image, two - 2 * per_image


def preset_row(preset: str, gpus: int, gpu_gib: float) -> list[str]:
    """One table row: preset, model, tokens, params, state, activations/image, memory per GPU, micro-batches."""
    config = build_config(preset)
    codec = build_codec(config, eta=config.data.eta or 1.0)
    parameters = sum(p.numel() for p in build_model(config, codec).parameters())
    state = parameters * STATE_BYTES_PER_PARAM
    per_gpu_batch = config.optim.batch_size // gpus
    cells = [preset, f"UViT-{config.model.size}", f"{codec.num_tokens}x{codec.token_dim}", f"{parameters / 1e6:.0f} M",
             f"{state / GIB:.1f}", str(per_gpu_batch)]  # fmt: skip
    for checkpointing in (False, True):
        per_image, fixed = activation_bytes(preset, checkpointing)
        total = state + fixed + per_image * per_gpu_batch
        room = gpu_gib * GIB - state - fixed
        micro = math.ceil(per_image * per_gpu_batch / room) if room > 0 else math.inf
        cells += [f"{per_image / 2**20:.1f}", f"{total / GIB:.1f}", str(micro)]
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8], help="GPUs sharing the paper's global batch")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (H100: 80, H200: 141)")
    parser.add_argument("--presets", nargs="+", default=PAPER_PRESETS, choices=PAPER_PRESETS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    header = ["preset", "model", "tokens", "params", "state GiB", "batch/GPU", "act MiB/img", "GiB/GPU",
              f"micro-batches ({args.gpu_gib:g} GiB)", "act MiB/img (ckpt)", "GiB/GPU (ckpt)", "micro-batches (ckpt)"]  # fmt: skip
    print("Estimated on a CPU (bf16 autocast saved tensors + 20 B/param of state), not measured on a GPU.")
    for gpus in args.gpus:
        print(f"\n{gpus} GPU(s), the paper's global batch split evenly:\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for preset in args.presets:
            print("| " + " | ".join(preset_row(preset, gpus, args.gpu_gib)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
