"""The training objective: eps-prediction MSE with entropy-based frequency reweighting (EBFR).

Loss (docs/ARCHITECTURE.md, "Diffusion", paper §4 "EBFR"): mean over token elements of w * (eps - eps_hat)^2, where w holds,
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

from dctdiff.core.codec import Codec
from dctdiff.core.noise_schedule import VPSchedule, network_time
from dctdiff.core.token_layout import TokenLayout


def ebfr_weights(entropy: Mapping[str, Sequence[float]], layout: TokenLayout) -> torch.Tensor:
    """EBFR loss weights [token_dim] from per-plane entropies in zigzag order (stats.json ``entropy``).

    Per plane: the first ``keep`` entropies divided by their mean (paper's train.py normalisation),
    laid out like the token (Y, Y, Y, Y, Cb, Cr for 4:2:0), each block ``keep`` long.

    A frequency with entropy 0 has no variance in the data (e.g. the chroma of grey images): its
    coefficients are all one value, but the network must still predict their noise for sampling to
    remove it, so it gets weight 1 (plain MSE), and the mean is taken over the plane's other
    frequencies. A plane with no variance at all is weighted 1 throughout. No dimension gets weight 0
    (docs/ARCHITECTURE.md, "Diffusion").
    """
    missing = [p for p in layout.planes if p not in entropy]
    if missing:
        raise ValueError(f"entropy needs planes {list(layout.planes)}; missing {missing} (got keys {sorted(entropy)})")
    per_plane = {}
    for plane in layout.planes:
        values = torch.as_tensor(list(entropy[plane]), dtype=torch.float64)
        if values.numel() < layout.keep:
            raise ValueError(f"entropy[{plane!r}] has {values.numel()} frequencies, fewer than keep = {layout.keep}")
        kept = values[: layout.keep]
        if not torch.isfinite(kept).all() or (kept < 0).any():
            raise ValueError(f"entropy[{plane!r}] must be finite and >= 0, got {kept.tolist()}")
        informative = kept > 0
        weights = torch.ones_like(kept)
        if informative.any():
            weights[informative] = kept[informative] / kept[informative].mean()
        per_plane[plane] = weights.tolist()
    return layout.spread(per_plane).float()


@dataclass
class LossOutput:
    """``per_sample`` [N] (weighted, differentiable); ``bands``: unweighted batch MSE per band (detached);
    both float32, also under autocast."""

    per_sample: torch.Tensor
    bands: dict[str, torch.Tensor]


class TokenLoss:
    """Weighted eps-prediction MSE over tokens [N, L, D].

    ``layout`` set: DCT tokens, per-band breakdown (dc/ac, luma/chroma and crossings); ``layout`` None:
    tokens without frequencies (pixels), only the overall ``mse`` band. ``weights`` [D] (e.g.
    ``ebfr_weights``) or None for all ones.
    """

    def __init__(self, weights: torch.Tensor | None = None, layout: TokenLayout | None = None) -> None:
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.ndim != 1:
                raise ValueError(f"weights must be a vector [token_dim], got shape {list(weights.shape)}")
            if layout is not None and weights.numel() != layout.token_dim:
                raise ValueError(f"weights has {weights.numel()} entries, expected token_dim = {layout.token_dim}")
        self.weights = weights
        self.layout = layout
        masks = layout.band_masks() if layout is not None else {}
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
    def for_codec(cls, codec: Codec, entropy: Mapping[str, Sequence[float]] | None = None) -> TokenLoss:
        """Loss for a codec's tokens: EBFR-weighted when ``entropy`` is given (needs a frequency layout)."""
        if codec.layout is None:
            if entropy is not None:
                raise ValueError("EBFR weights need the DCT codec; pass entropy=None for the pixel codec")
            return cls()
        return cls(ebfr_weights(entropy, codec.layout) if entropy is not None else None, codec.layout)

    def __call__(self, eps_pred: torch.Tensor, eps: torch.Tensor) -> LossOutput:
        """Predicted and true noise [N, L, D] -> per-sample loss [N] and band MSEs."""
        if eps_pred.shape != eps.shape or eps.ndim != 3:
            raise ValueError(f"eps_pred {list(eps_pred.shape)} and eps {list(eps.shape)} must both be [N, L, D]")
        dim = eps.shape[-1]
        if self.layout is not None and dim != self.layout.token_dim:
            raise ValueError(f"token dim {dim} does not match the DCT layout's {self.layout.token_dim}")
        if self.weights is not None and self.weights.numel() != dim:
            raise ValueError(f"weights has {self.weights.numel()} entries but tokens have dim {dim}")
        weights, band_matrix = self._constants(eps.device)
        sq = (eps_pred.float() - eps.float()).pow(2)  # [N, L, D]
        per_sample = (sq if weights is None else sq * weights).mean(dim=(1, 2))  # [N]
        per_dim = sq.detach().mean(dim=(0, 1))  # [D]
        bands = {"mse": per_dim.mean()}
        if self._band_names:
            # multiply and sum, not a matmul: autocast would run `@` in bf16 and round the logged MSEs
            per_band = (band_matrix * per_dim).sum(dim=1)  # [bands] float32
            bands.update(zip(self._band_names, per_band.unbind(), strict=True))
        return LossOutput(per_sample, bands)


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    schedule: VPSchedule,
    x0: torch.Tensor,
    loss_fn: TokenLoss,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
) -> LossOutput:
    """One eps-prediction step on clean tokens x0 [N, L, D] (paper §4): t ~ U(0, 1), eps ~ N(0, I) unless
    given, x_t = alpha(t) x0 + sigma(t) eps, loss of model(x_t, 999 t, labels) against eps.

    The trainer passes its counter-based ``t`` [N] and ``eps`` [N, L, D]; tests and benchmarks draw them here.
    """
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)  # [N]
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # [N, L, D]
    x_t = schedule.add_noise(x0, t, eps)  # [N, L, D]
    return loss_fn(model(x_t, network_time(t), labels), eps)
