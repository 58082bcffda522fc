"""Images from a trained network: sampler in token space, then the codec's decoder. One function
serves the trainer's sample grids, the sampling job and the sweeps' FID."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dctdiff.core.codec import Codec
from dctdiff.core.uvit import UViT
from dctdiff.core.samplers import model_eps_fn, sample
from dctdiff.core.noise_schedule import VPSchedule


@torch.no_grad()
def generate_images(
    model: UViT,
    codec: Codec,
    schedule: VPSchedule,
    seeds: Sequence[int],
    sampler: str = "dpm++2m",
    nfe: int = 50,
    labels: Sequence[int] | None = None,
    guidance_scale: float = 1.0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 images [len(seeds), H, W, 3]; image i depends only on seeds[i] (and labels[i]).

    Class-conditional models without ``labels`` get the null label (unconditional samples).
    """
    was_training = model.training
    model.eval()
    null = model.null_label_index
    if labels is None and null is not None:
        labels = [null] * len(seeds)
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        tokens = sample(
            model_eps_fn(model),
            (codec.num_tokens, codec.token_dim),
            chunk,
            schedule,
            sampler=sampler,
            nfe=nfe,
            labels=None if labels is None else list(labels[start : start + batch_size]),
            guidance_scale=guidance_scale,
            null_label=null,
            device=device,
            progress=progress,
            x0_bound=codec.token_bound,  # static thresholding to the tokens' exact range
        )  # [n, L, D]
        out.append(codec.decode(tokens.float()).cpu())
    model.train(was_training)
    return torch.cat(out)
