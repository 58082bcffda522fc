"""The training objective: eps-prediction MSE with entropy-based frequency reweighting (EBFR).

Loss (DESIGN.md §5, paper §4 "EBFR"): mean over token elements of w * (eps - eps_hat)^2, where w holds,
for each plane (Y, Cb, Cr), the entropies of its kept zigzag frequencies divided by their mean, laid
out like the token (Y x4, Cb, Cr; block-major). All ones when reweighting is off; the pixel codec uses
the same object with no layout (plain MSE, no frequency bands).

Usage, identical for both codecs::

    loss_fn = TokenLoss.for_codec(codec, entropy=stats["entropy"] if ebfr else None)
    out = loss_fn(model(x_t, network_time(t), labels), eps)   # or diffusion_loss(model, schedule, x0, loss_fn)
    out.per_sample.mean().backward(); log(out.bands)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from dctdiff.codec import BLOCKS_PER_TOKEN, PLANE_OF_BLOCK
from dctdiff.schedule import VPSchedule, network_time

PLANES = ("Y", "Cb", "Cr")


def ebfr_weights(entropy: Mapping[str, Sequence[float]], keep: int) -> torch.Tensor:
    """EBFR loss weights [6 * keep] from per-plane entropies in zigzag order (stats.json ``entropy``).

    Per plane: the first ``keep`` entropies divided by their mean (paper's train.py normalisation);
    laid out [Y, Y, Y, Y, Cb, Cr] along the token, each block ``keep`` long.
    """
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    missing = [p for p in PLANES if p not in entropy]
    if missing:
        raise ValueError(f"entropy needs planes {list(PLANES)}; missing {missing} (got keys {sorted(entropy)})")
    per_plane = {}
    for plane in PLANES:
        values = torch.as_tensor(list(entropy[plane]), dtype=torch.float64)
        if values.numel() < keep:
            raise ValueError(f"entropy[{plane!r}] has {values.numel()} frequencies, fewer than keep = {keep}")
        kept = values[:keep]
        if not torch.isfinite(kept).all() or (kept < 0).any() or kept.sum() <= 0:
            raise ValueError(f"entropy[{plane!r}] must be finite, >= 0 and not all zero, got {kept.tolist()}")
        per_plane[plane] = kept / kept.mean()
    return torch.cat([per_plane[plane] for plane in PLANE_OF_BLOCK]).float()


def _dct_band_masks(keep: int) -> dict[str, torch.Tensor]:
    """Boolean masks [6 * keep] over the token dims: luma/chroma x DC/AC and their unions."""
    block = torch.arange(BLOCKS_PER_TOKEN * keep) // keep  # which of the 6 blocks
    freq = torch.arange(BLOCKS_PER_TOKEN * keep) % keep  # zigzag index inside the block; 0 is DC
    luma = torch.tensor([PLANE_OF_BLOCK[int(b)] == "Y" for b in block])
    dc = freq == 0
    masks = {"luma": luma, "chroma": ~luma, "dc": dc, "luma_dc": luma & dc, "chroma_dc": ~luma & dc}
    if keep > 1:
        masks.update(ac=~dc, luma_ac=luma & ~dc, chroma_ac=~luma & ~dc)
    return masks


@dataclass
class LossOutput:
    """``per_sample`` [N] (weighted, differentiable); ``bands``: unweighted batch MSE per band (detached)."""

    per_sample: torch.Tensor
    bands: dict[str, torch.Tensor]


class TokenLoss:
    """Weighted eps-prediction MSE over tokens [N, L, D].

    ``keep`` set: DCT token layout (D = 6 keep), per-band breakdown (dc/ac, luma/chroma and crossings);
    ``keep`` None: pixel tokens, only the overall ``mse`` band. ``weights`` [D] (e.g. ``ebfr_weights``)
    or None for all ones.
    """

    def __init__(self, weights: torch.Tensor | None = None, keep: int | None = None) -> None:
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive int or None (pixel tokens), got {keep!r}")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.ndim != 1:
                raise ValueError(f"weights must be a vector [token_dim], got shape {list(weights.shape)}")
            if keep is not None and weights.numel() != BLOCKS_PER_TOKEN * keep:
                raise ValueError(f"weights has {weights.numel()} entries, expected 6 * keep = {6 * keep}")
        self.weights = weights
        self.keep = keep
        masks = _dct_band_masks(keep) if keep is not None else {}
        self._band_names = list(masks)
        # [bands, D]: each row averages the dims of one band, so all band MSEs are one mat-vec (no host syncs)
        self._band_matrix = torch.stack([m.float() / m.sum() for m in masks.values()]) if masks else torch.zeros(0, 0)
        self._device_constants: tuple[torch.device, torch.Tensor | None, torch.Tensor] | None = None

    def _constants(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Weights and band matrix on ``device`` (moved once, then cached)."""
        if self._device_constants is None or self._device_constants[0] != device:
            weights = None if self.weights is None else self.weights.to(device)
            self._device_constants = (device, weights, self._band_matrix.to(device))
        return self._device_constants[1], self._device_constants[2]

    @classmethod
    def for_codec(cls, codec: object, entropy: Mapping[str, Sequence[float]] | None = None) -> TokenLoss:
        """Loss for a DCTCodec (has ``keep``; EBFR if ``entropy`` given) or a PixelCodec (plain MSE)."""
        keep = getattr(codec, "keep", None)
        if keep is None:
            if entropy is not None:
                raise ValueError("EBFR weights need the DCT codec; pass entropy=None for the pixel codec")
            return cls()
        return cls(ebfr_weights(entropy, keep) if entropy is not None else None, keep)

    def __call__(self, eps_pred: torch.Tensor, eps: torch.Tensor) -> LossOutput:
        """Predicted and true noise [N, L, D] -> per-sample loss [N] and band MSEs."""
        if eps_pred.shape != eps.shape or eps.ndim != 3:
            raise ValueError(f"eps_pred {list(eps_pred.shape)} and eps {list(eps.shape)} must both be [N, L, D]")
        dim = eps.shape[-1]
        if self.keep is not None and dim != BLOCKS_PER_TOKEN * self.keep:
            raise ValueError(f"token dim {dim} does not match the DCT layout 6 * keep = {6 * self.keep}")
        if self.weights is not None and self.weights.numel() != dim:
            raise ValueError(f"weights has {self.weights.numel()} entries but tokens have dim {dim}")
        weights, band_matrix = self._constants(eps.device)
        sq = (eps_pred.float() - eps.float()).pow(2)  # [N, L, D]
        per_sample = (sq if weights is None else sq * weights).mean(dim=(1, 2))  # [N]
        per_dim = sq.detach().mean(dim=(0, 1))  # [D]
        bands = {"mse": per_dim.mean()}
        if self._band_names:
            bands.update(zip(self._band_names, (band_matrix @ per_dim).unbind(), strict=True))
        return LossOutput(per_sample, bands)


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    schedule: VPSchedule,
    x0: torch.Tensor,
    loss_fn: TokenLoss,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """One eps-prediction step on clean tokens x0 [N, L, D]: t ~ U(0, 1), eps ~ N(0, I),
    x_t = alpha(t) x0 + sigma(t) eps, loss of model(x_t, 999 t, labels) against eps."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)  # [N]
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # [N, L, D]
    x_t = schedule.add_noise(x0, t, eps)
    return loss_fn(model(x_t, network_time(t), labels), eps)
