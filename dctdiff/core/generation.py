"""Images from a trained network: sampler in token space, then the codec's decoder. One function
serves the trainer's sample grids, the sampling job and the sweeps' FID."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dctdiff.core.codec import Codec
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.precision import Precision, autocast
from dctdiff.core.samplers import model_eps_fn, sample
from dctdiff.core.uvit import UViT


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
    precision: Precision = "auto",
    on_device: bool = False,
) -> torch.Tensor:
    """uint8 images [len(seeds), H, W, 3] on the CPU (``on_device``: left on ``device``, e.g. for Inception
    features on the same GPU); image i depends only on seeds[i] (and labels[i]).

    Class-conditional models without ``labels`` get the null label (unconditional samples). ``precision``:
    the network's (``dctdiff.core.precision``; bf16 on CUDA by default); the sampler's own arithmetic stays
    float32.
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
            _with_precision(model_eps_fn(model), device, precision),
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
        images = codec.decode(tokens.float())  # [n, H, W, 3] uint8 on the device
        out.append(images if on_device else images.cpu())
    model.train(was_training)
    return torch.cat(out)


def _with_precision(eps_fn, device: torch.device | str, precision: Precision):
    """``eps_fn`` under the autocast of ``precision``, returning float32."""

    def wrapped(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, precision):
            return eps_fn(x, t, labels).float()

    return wrapped
