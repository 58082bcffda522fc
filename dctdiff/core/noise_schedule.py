"""The variance-preserving noise schedule with DCTdiff's SNR scaling.

Linear VP schedule (Song et al. 2021; docs/ARCHITECTURE.md, "Diffusion"): beta(t) = beta_min + (beta_max - beta_min) t on
t in [0, 1], so alpha_bar(t) = exp(-g(t)) with g(t) = beta_min t + (beta_max - beta_min) t^2 / 2.

SNR scaling (Ning et al. 2025, §4): every SNR(t) = alpha_bar / (1 - alpha_bar) is multiplied by c,
i.e. the log-SNR is shifted by log c, which gives alpha_bar_c = c alpha_bar / (1 + (c - 1) alpha_bar).

Everything is computed from the log-SNR ``lam`` (softplus / logsigmoid / expm1 forms) so it stays
accurate where alpha_bar is close to 1 (t -> 0) or close to 0 (t -> 1):
alpha_bar = sigmoid(lam), sigma^2 = 1 - alpha_bar = sigmoid(-lam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Network time input: U-ViT / DCTdiff feed 999 t to the sinusoidal embedding (their sde.py).
NETWORK_TIME_SCALE = 999.0


def network_time(t: torch.Tensor) -> torch.Tensor:
    """Continuous time t in [0, 1] -> the timestep value the published U-ViT was trained with (999 t)."""
    return t * NETWORK_TIME_SCALE


def _expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] broadcastable against x [N, ...]."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class VPSchedule:
    """Linear VP schedule with SNR scale c (``snr_scale``); c = 1 is the plain schedule.

    All methods are vectorised over a tensor of times ``t`` (any shape) in [0, 1].
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    snr_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.beta_min > 0 and self.beta_max > self.beta_min):
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")
        if not self.snr_scale > 0:
            raise ValueError(f"snr_scale (c) must be > 0, got {self.snr_scale}; use 1.0 for the plain schedule")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) of the unscaled schedule."""
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _g(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = -log alpha_bar(t) of the unscaled schedule = integral of beta from 0 to t."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """log SNR_c(t) = -log(expm1(g(t))) + log c  (+inf at t = 0)."""
        return -torch.log(torch.expm1(self._g(t))) + math.log(self.snr_scale)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of ``log_snr``: solves g(t) = softplus(-(lam - log c)) for t in [0, 1]."""
        g = F.softplus(-(lam - math.log(self.snr_scale)))
        # Root of (beta_max - beta_min)/2 t^2 + beta_min t - g = 0 in the cancellation-free form.
        return 2.0 * g / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * g))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar_c(t) = sigmoid(log SNR_c(t)) = c a / (1 + (c - 1) a), a = exp(-g(t))."""
        return torch.sigmoid(self.log_snr(t))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal coefficient sqrt(alpha_bar_c(t))."""
        return torch.exp(0.5 * F.logsigmoid(self.log_snr(t)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise coefficient sqrt(1 - alpha_bar_c(t))."""
        return torch.exp(0.5 * F.logsigmoid(-self.log_snr(t)))

    def sde_beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta_c(t) = -d log alpha_bar_c / dt, the diffusion rate of the SNR-scaled VP SDE.

        d lam/dt = -beta(t) / (1 - exp(-g)), and d log sigmoid(lam)/dt = sigmoid(-lam) d lam/dt,
        so beta_c = sigma_c^2 beta / (-expm1(-g)); c = 1 gives back beta(t).
        """
        return torch.sigmoid(-self.log_snr(t)) * self.beta(t) / -torch.expm1(-self._g(t))

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): alpha(t) x0 + sigma(t) eps, with t [N] and x0, eps [N, ...]."""
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must have shape [N] = [{x0.shape[0]}], got {list(t.shape)}")
        if eps.shape != x0.shape:
            raise ValueError(f"eps shape {list(eps.shape)} must equal x0 shape {list(x0.shape)}")
        return _expand_like(self.alpha(t), x0) * x0 + _expand_like(self.sigma(t), x0) * eps
