"""VPSchedule against the closed forms of the linear VP schedule with SNR scaling (docs/ARCHITECTURE.md, "Diffusion")."""

import math

import pytest
import torch

from dctdiff.core.noise_schedule import VPSchedule, network_time

T = torch.tensor([0.0, 1e-7, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0], dtype=torch.float64)
SCALES = [0.5, 1.0, 2.0, 4.0, 12.0]


def plain_alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """alpha_bar(t) = exp(-(0.1 t + 9.95 t^2)) for beta(t) = 0.1 + 19.9 t."""
    return torch.exp(-(0.1 * t + 9.95 * t**2))


@pytest.mark.parametrize("c", SCALES)
def test_alpha_bar_matches_snr_scaled_closed_form(c):
    a = plain_alpha_bar(T)
    expected = c * a / (1 + (c - 1) * a)
    torch.testing.assert_close(VPSchedule(snr_scale=c).alpha_bar(T), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("c", SCALES)
def test_snr_is_scaled_by_exactly_c(c):
    t = T[1:]  # SNR(0) is infinite
    plain, scaled = VPSchedule().log_snr(t), VPSchedule(snr_scale=c).log_snr(t)
    torch.testing.assert_close(scaled - plain, torch.full_like(t, math.log(c)), rtol=0, atol=1e-12)
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    ab_plain = plain_alpha_bar(t[t > 0.01])
    ab_scaled = VPSchedule(snr_scale=c).alpha_bar(t[t > 0.01])
    torch.testing.assert_close(snr(ab_scaled) / snr(ab_plain), torch.full_like(ab_plain, c), rtol=1e-9, atol=0)


@pytest.mark.parametrize("c", SCALES)
def test_monotone_and_variance_preserving(c):
    schedule = VPSchedule(snr_scale=c)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    assert (schedule.alpha_bar(t).diff() < 0).all()
    assert (schedule.log_snr(t).diff() < 0).all()
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))


@pytest.mark.parametrize("c", SCALES)
def test_t_from_log_snr_inverts_log_snr(c):
    schedule = VPSchedule(snr_scale=c)
    t = torch.cat([torch.tensor([1e-7, 1e-5]), torch.linspace(1e-3, 1, 500)]).double()
    torch.testing.assert_close(schedule.t_from_log_snr(schedule.log_snr(t)), t, rtol=1e-9, atol=0)
    assert schedule.t_from_log_snr(torch.tensor(math.inf)) == 0


def test_float32_is_accurate_near_both_ends():
    """1 - alpha_bar in float32 would give sigma = 0 at t = 1e-7; the log-SNR forms do not."""
    schedule = VPSchedule(snr_scale=4.0)
    t64 = torch.tensor([1e-7, 1e-5, 0.5, 0.999, 1.0], dtype=torch.float64)
    g = 0.1 * t64 + 9.95 * t64**2
    # sigma_c^2 = (1 - a) / (1 + (c - 1) a) with a = exp(-g), written with expm1 in float64
    sigma_ref = torch.sqrt(-torch.expm1(-g) / (1 + 3 * torch.exp(-g)))
    alpha_ref = torch.sqrt(4 * torch.exp(-g) / (1 + 3 * torch.exp(-g)))
    t32 = t64.float()
    torch.testing.assert_close(schedule.sigma(t32).double(), sigma_ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(schedule.alpha(t32).double(), alpha_ref, rtol=2e-6, atol=0)
    assert schedule.sigma(torch.tensor(0.0)) == 0 and schedule.alpha(torch.tensor(0.0)) == 1


@pytest.mark.parametrize("c", [1.0, 4.0])
def test_sde_beta_is_minus_dlog_alpha_bar_dt(c):
    schedule = VPSchedule(snr_scale=c)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    numeric = -(torch.log(schedule.alpha_bar(t + h)) - torch.log(schedule.alpha_bar(t - h))) / (2 * h)
    torch.testing.assert_close(schedule.sde_beta(t), numeric, rtol=1e-6, atol=0)
    if c == 1.0:
        torch.testing.assert_close(schedule.sde_beta(t), 0.1 + 19.9 * t)


def test_add_noise_and_network_time():
    schedule = VPSchedule(snr_scale=2.0)
    x0, eps = torch.randn(3, 5, 6, dtype=torch.float64), torch.randn(3, 5, 6, dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    ab = schedule.alpha_bar(t)
    expected = torch.stack([ab[i].sqrt() * x0[i] + (1 - ab[i]).sqrt() * eps[i] for i in range(3)])
    torch.testing.assert_close(schedule.add_noise(x0, t, eps), expected)
    assert torch.equal(schedule.add_noise(x0, t, eps)[0], x0[0])
    torch.testing.assert_close(network_time(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 499.5, 999.0]))
    with pytest.raises(ValueError, match=r"t must have shape \[N\]"):
        schedule.add_noise(x0, t[:2], eps)
    with pytest.raises(ValueError, match="eps shape"):
        schedule.add_noise(x0, t, eps[:, :1])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="snr_scale"):
        VPSchedule(snr_scale=0.0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSchedule(beta_min=5.0, beta_max=1.0)
