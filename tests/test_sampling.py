"""Samplers against Gaussian data, whose ideal noise predictor and probability-flow ODE are known exactly.

Data x0 ~ N(mu, diag(s^2)). Then x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2) and the ideal predictor is
E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2). The ODE keeps the standardised
coordinate fixed: x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) z, which gives each sample's exact
end point from its start x_1. Stds s in [0.05, 0.5] mimic eta-scaled DCT tokens.
"""

import math

import pytest
import torch

from dctdiff.core.counter_rng import SeedNoise
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.samplers import SAMPLERS, model_eps_fn, sample, time_grid
from dctdiff.core.uvit import build_uvit
from tests.counter_reference import reference_seed_noise

SHAPE = (4, 6)
MU = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(SHAPE)
STD = torch.linspace(0.05, 0.5, 24, dtype=torch.float64).reshape(SHAPE)
SCHEDULE = VPSchedule(snr_scale=4.0)
T_MIN = 1e-3


def gaussian_eps_fn(mu=MU, std=STD, schedule=SCHEDULE):
    def eps_fn(x, t, labels):
        alpha = schedule.alpha(t.double()).reshape(-1, 1, 1)
        sigma = schedule.sigma(t.double()).reshape(-1, 1, 1)
        return (sigma * (x.double() - alpha * mu) / (alpha**2 * std**2 + sigma**2)).to(x.dtype)

    return eps_fn


def exact_ode_end(x1: torch.Tensor) -> torch.Tensor:
    ends = torch.tensor([1.0, T_MIN], dtype=torch.float64)
    alpha, sigma = SCHEDULE.alpha(ends), SCHEDULE.sigma(ends)
    spread = lambda i: torch.sqrt(alpha[i] ** 2 * STD**2 + sigma[i] ** 2)  # noqa: E731
    return alpha[1] * MU + spread(1) / spread(0) * (x1.double() - alpha[0] * MU)


def start_noise(seeds):
    """x_1 of each seed from the pure-Python reference of the sampler's stream (draw 0) -> [N, *SHAPE]."""
    count = math.prod(SHAPE)
    return torch.tensor([reference_seed_noise(s, 0, count) for s in seeds], dtype=torch.float64).reshape(-1, *SHAPE)


def ode_error(sampler: str, nfe: int, seeds=range(64)) -> float:
    x = sample(gaussian_eps_fn(), SHAPE, list(seeds), SCHEDULE, sampler, nfe, t_min=T_MIN, dtype=torch.float64)
    return ((x - exact_ode_end(start_noise(seeds))) ** 2).mean().sqrt().item()


@pytest.mark.parametrize(
    "sampler, nfe", [("dpm++2m", 25), ("dpm++3m", 25), ("ddim", 200), ("euler", 100), ("euler_maruyama", 400)]
)
def test_samples_match_the_data_mean_and_variance(sampler, nfe):
    seeds = list(range(1000))
    x = sample(gaussian_eps_fn(), SHAPE, seeds, SCHEDULE, sampler, nfe, t_min=T_MIN)
    z = (x.double() - MU) / STD  # standardised: N(0, 1) per element if the sampler is right
    assert z.mean(0).abs().max() < 0.15  # 1000 samples: standard error 0.032
    assert (z.var(0) - 1).abs().max() < 0.2  # standard error 0.045
    assert abs(z.var().item() - 1) < 0.06


def test_dpm_solver_pp_beats_euler_at_10_steps():
    dpm, euler = ode_error("dpm++2m", 10), ode_error("euler", 10)
    assert dpm < euler / 2, (dpm, euler)


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("euler", 1), ("dpm++2m", 2)])
def test_observed_convergence_order(sampler, order):
    """Halving the step must divide the error by about 2^order."""
    ratio = ode_error(sampler, 32) / ode_error(sampler, 64)
    assert math.log2(ratio) == pytest.approx(order, abs=0.2)


def test_dpm_solver_3m_beats_2m_with_enough_steps():
    assert ode_error("dpm++3m", 32) < 0.6 * ode_error("dpm++2m", 32)


def test_logsnr_grid_is_uniform_in_log_snr():
    t = time_grid(SCHEDULE, 10, T_MIN, "logsnr")
    assert t[0] == 1.0 and t[-1] == T_MIN and (t.diff() < 0).all()
    steps = SCHEDULE.log_snr(t).diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps.mean().item()))
    torch.testing.assert_close(time_grid(SCHEDULE, 4, 0.2, "time"), torch.tensor([1, 0.8, 0.6, 0.4, 0.2]).double())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_image_at_any_batch_size(sampler):
    seeds = [11, 3, 3, 2024, 7, 0, 5]
    batch = sample(gaussian_eps_fn(), SHAPE, seeds, SCHEDULE, sampler, nfe=8)
    singles = torch.cat([sample(gaussian_eps_fn(), SHAPE, [s], SCHEDULE, sampler, nfe=8) for s in seeds])
    assert torch.equal(batch, singles)
    assert torch.equal(batch[1], batch[2]) and not torch.equal(batch[0], batch[1])


def test_seed_noise_matches_the_reference_and_is_standard_normal():
    """Every draw of every seed is the reference stream's (float32 Box-Muller within rounding); draws are
    independent of each other and of the batch they come in."""
    noise = SeedNoise([0, 7, 2**40 + 3], "cpu")
    for draw in (0, 1, 9):
        expected = torch.tensor([reference_seed_noise(s, draw, 24) for s in (0, 7, 2**40 + 3)], dtype=torch.float64)
        torch.testing.assert_close(noise(draw, SHAPE).reshape(3, 24).double(), expected, rtol=0, atol=2e-6)
    assert torch.equal(SeedNoise([7], "cpu")(1, SHAPE)[0], noise(1, SHAPE)[1])
    many = SeedNoise(range(4096), "cpu")
    z0, z1 = many(0, (96,)).double(), many(1, (96,)).double()  # 393216 draws each
    assert abs(z0.mean().item()) < 0.01 and abs(z0.std().item() - 1) < 0.005 and abs((z0**4).mean().item() - 3) < 0.05
    assert abs((z0 * z1).mean().item()) < 0.01  # draws uncorrelated
    assert abs((z0[:-1] * z0[1:]).mean().item()) < 0.01  # neighbouring seeds uncorrelated


def test_euler_maruyama_adds_the_seeds_step_noise():
    """One stochastic step from x_1 with eps = 0: x_1 + dt (-beta/2 x_1) plus sqrt(beta |dt|) times draw 1."""
    seeds = [3, 4]
    zero_eps = lambda x, t, labels: torch.zeros_like(x)  # noqa: E731
    out = sample(
        zero_eps, SHAPE, seeds, SCHEDULE, "euler_maruyama", nfe=2, spacing="time", t_min=0.5, dtype=torch.float64
    )
    t = torch.tensor([1.0, 0.75], dtype=torch.float64)
    beta = SCHEDULE.sde_beta(t).tolist()
    x1 = start_noise(seeds)
    z1 = torch.tensor([reference_seed_noise(s, 1, 24) for s in seeds], dtype=torch.float64).reshape(-1, *SHAPE)
    x = x1 - 0.25 * (-0.5 * beta[0] * x1) + math.sqrt(beta[0] * 0.25) * z1
    expected = x - 0.25 * (-0.5 * beta[1] * x)  # the last step adds no noise
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_cuda_sampling_matches_cpu_sampling():
    """The noise is drawn on the GPU from the same stream: the same samples up to float32 rounding."""
    seeds = list(range(32))
    cpu = sample(gaussian_eps_fn(), SHAPE, seeds, SCHEDULE, "euler_maruyama", nfe=10)
    cuda = sample(
        gaussian_eps_fn(MU.cuda(), STD.cuda()), SHAPE, seeds, SCHEDULE, "euler_maruyama", nfe=10, device="cuda"
    )
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)


def test_same_seed_same_image_with_a_uvit_and_guidance():
    torch.manual_seed(0)
    model = build_uvit("tiny", token_dim=24, num_tokens=16, num_classes=3).eval()
    kwargs = dict(schedule=SCHEDULE, sampler="dpm++2m", nfe=4, guidance_scale=2.0, null_label=model.null_label_index)
    seeds, labels = [5, 6, 7, 8, 9, 10, 11], [0, 1, 2, 0, 1, 2, 0]
    batch = sample(model_eps_fn(model), (16, 24), seeds, labels=labels, **kwargs)
    singles = [
        sample(model_eps_fn(model), (16, 24), [s], labels=[y], **kwargs) for s, y in zip(seeds, labels, strict=True)
    ]
    assert torch.equal(batch, torch.cat(singles))


def test_classifier_free_guidance_extrapolates_the_mean():
    """eps is affine in mu, so guided eps = eps_null + s (eps_cond - eps_null) is the ideal predictor for
    mean mu_null + s (mu_cond - mu_null): the samples must have that mean."""
    mu_null, mu_cond = torch.zeros(SHAPE, dtype=torch.float64), MU
    null_fn, cond_fn = gaussian_eps_fn(mu=mu_null), gaussian_eps_fn(mu=mu_cond)

    def eps_fn(x, t, labels):
        is_null = (labels == 9).reshape(-1, 1, 1)
        return torch.where(is_null, null_fn(x, t, labels), cond_fn(x, t, labels))

    seeds = list(range(400))
    for scale in (0.0, 1.0, 2.5):
        x = sample(eps_fn, SHAPE, seeds, SCHEDULE, nfe=25, labels=[1] * 400, guidance_scale=scale, null_label=9)
        expected = mu_null + scale * (mu_cond - mu_null)
        assert ((x.double().mean(0) - expected) / STD).abs().max() < 0.2, scale


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_nfe_counts_network_calls(sampler):
    calls = []

    def eps_fn(x, t, labels):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    sample(eps_fn, SHAPE, [1, 2], SCHEDULE, sampler, nfe=7, labels=[0, 1], guidance_scale=3.0, null_label=5)
    assert calls == [4] * 7  # conditional and null batch together, once per step


def test_bad_arguments():
    fn = gaussian_eps_fn()
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        sample(fn, SHAPE, [0], SCHEDULE, sampler="heun")
    with pytest.raises(ValueError, match="nfe must be a positive int"):
        sample(fn, SHAPE, [0], SCHEDULE, nfe=0)
    with pytest.raises(ValueError, match="needs labels and the model's null_label"):
        sample(fn, SHAPE, [0], SCHEDULE, guidance_scale=2.0)
    with pytest.raises(ValueError, match="one entry per seed"):
        sample(fn, SHAPE, [0, 1], SCHEDULE, labels=[3])
    with pytest.raises(ValueError, match="seeds is empty"):
        sample(fn, SHAPE, [], SCHEDULE)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_x0_bound_keeps_samples_inside_the_data_range(sampler):
    """Static thresholding: data far outside [-1, 1] (mean 5) is pulled to the bound; unbounded it is not."""
    eps_fn = gaussian_eps_fn(
        mu=torch.full(SHAPE, 5.0, dtype=torch.float64), std=torch.full(SHAPE, 0.1, dtype=torch.float64)
    )
    seeds = list(range(16))
    free = sample(eps_fn, SHAPE, seeds, SCHEDULE, sampler=sampler, nfe=20)
    bounded = sample(eps_fn, SHAPE, seeds, SCHEDULE, sampler=sampler, nfe=20, x0_bound=1.0)
    slack = 5 * float(SCHEDULE.sigma(torch.tensor(1e-4)))  # the noise left at t_min
    assert free.mean() > 4.0
    assert bounded.abs().max() <= 1.0 + slack
    with pytest.raises(ValueError, match="x0_bound must be > 0"):
        sample(eps_fn, SHAPE, seeds, SCHEDULE, nfe=2, x0_bound=0.0)


def test_bf16_sampling_stays_close_to_fp32():
    """The GPU default (bf16 autocast of the network) on CPU autocast: the same images up to a few levels."""
    from dctdiff.core.codec import DCTCodec
    from dctdiff.core.generation import generate_images

    torch.manual_seed(0)
    codec = DCTCodec(16, 2, 4, 242.0)
    model = build_uvit(
        "tiny",
        token_dim=codec.token_dim,
        num_tokens=codec.num_tokens,
        embed_dim=32,
        depth=2,
        num_heads=2,
        token_grid=codec.grid,
    )
    images = {
        precision: generate_images(model, codec, SCHEDULE, range(4), nfe=5, precision=precision).float()
        for precision in ("fp32", "bf16", "auto")
    }
    assert torch.equal(images["auto"], images["fp32"])  # CPU default: fp32
    difference = (images["bf16"] - images["fp32"]).abs()
    assert 0 < difference.mean() < 2.0 and difference.max() <= 32
