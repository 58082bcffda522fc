"""EBFR weights against hand-computed values from the paper's CIFAR-10 config; loss and bands against loops."""

import pytest
import torch

from dctdiff.core.codec import DCTCodec, PixelCodec
from dctdiff.core.loss import TokenLoss, diffusion_loss, ebfr_weights
from dctdiff.core.noise_schedule import VPSchedule, network_time
from dctdiff.core.token_layout import TokenLayout

# DCTdiff configs/cifar10_uvit_mid_2by2.py (docs/ARCHITECTURE.md, "Presets"); for B = 2 zigzag order == raster order.
CIFAR10_ENTROPY = {
    "Y": [6.471, 3.588, 3.767, 2.411],
    "Cb": [4.308, 1.315, 1.487, 1.0],
    "Cr": [4.014, 1.284, 1.435, 1.0],
}
# By hand: Y sum 16.237, mean 4.05925; Cb sum 8.11, mean 2.0275; Cr sum 7.733, mean 1.93325.
Y4 = [1.594137, 0.883907, 0.928004, 0.593952]
CB4 = [2.124784, 0.648582, 0.733416, 0.493218]
CR4 = [2.076296, 0.664167, 0.742273, 0.517264]


def test_ebfr_weights_for_paper_cifar10_entropies():
    expected = torch.tensor(Y4 * 4 + CB4 + CR4)
    torch.testing.assert_close(ebfr_weights(CIFAR10_ENTROPY, TokenLayout(4)), expected, rtol=0, atol=2e-6)


def test_ebfr_weights_truncate_before_normalising():
    # keep = 2: Y [6.471, 3.588] / 5.0295; Cb [4.308, 1.315] / 2.8115; Cr [4.014, 1.284] / 2.649
    expected = torch.tensor([1.286609, 0.713391] * 4 + [1.532278, 0.467722] + [1.515289, 0.484711])
    weights = ebfr_weights(CIFAR10_ENTROPY, TokenLayout(2))
    torch.testing.assert_close(weights, expected, rtol=0, atol=2e-6)
    assert weights.shape == (12,)


def test_ebfr_weights_bad_input():
    with pytest.raises(ValueError, match=r"missing \['Cr'\]"):
        ebfr_weights({"Y": [1.0], "Cb": [1.0]}, TokenLayout(1))
    with pytest.raises(ValueError, match="fewer than keep = 5"):
        ebfr_weights(CIFAR10_ENTROPY, TokenLayout(5))
    with pytest.raises(ValueError, match="finite and >= 0"):
        ebfr_weights({**CIFAR10_ENTROPY, "Cb": [1.0, -1.0, 0.0, 0.0]}, TokenLayout(4))


def test_ebfr_gives_no_dimension_zero_weight():
    """Grey data: Cb and Cr have entropy 0 everywhere -> weight 1 (plain MSE); a zero-entropy frequency in
    an informative plane -> 1, the plane's other weights normalised over its informative frequencies."""
    entropy = {"Y": [4.0, 2.0, 0.0, 2.0], "Cb": [0.0] * 4, "Cr": [0.0] * 4}
    weights = ebfr_weights(entropy, TokenLayout(4)).reshape(6, 4)
    expected_y = torch.tensor([4 / (8 / 3), 2 / (8 / 3), 1.0, 2 / (8 / 3)])
    for block in range(4):
        torch.testing.assert_close(weights[block], expected_y)
    torch.testing.assert_close(weights[4:], torch.ones(2, 4))
    assert (weights > 0).all()


def test_weights_off_is_plain_mse_and_weighted_loss_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    pred, eps = torch.randn(3, 5, 24, generator=gen), torch.randn(3, 5, 24, generator=gen)
    plain = TokenLoss(layout=TokenLayout(4))(pred, eps)
    torch.testing.assert_close(plain.per_sample, ((pred - eps) ** 2).mean(dim=(1, 2)))
    w = ebfr_weights(CIFAR10_ENTROPY, TokenLayout(4))
    weighted = TokenLoss(w, TokenLayout(4))(pred, eps).per_sample
    for n in range(3):
        total = sum(w[d] * (pred[n, tok, d] - eps[n, tok, d]) ** 2 for tok in range(5) for d in range(24))
        torch.testing.assert_close(weighted[n], total / (5 * 24))


def test_bands_follow_the_token_layout():
    """keep = 4: dims 0,4,8,12 are Y DC, 16 Cb DC, 20 Cr DC; 0..15 luma, 16..23 chroma."""
    pred = torch.zeros(2, 3, 24)
    eps = torch.zeros(2, 3, 24)
    eps[..., [0, 4, 8, 12]] = 1.0  # error 1 on every luma DC
    eps[..., 21] = 2.0  # error 4 on one chroma AC (Cr, zigzag 1)
    bands = TokenLoss(layout=TokenLayout(4))(pred, eps).bands
    expected = {
        "luma_dc": 1.0, "luma_ac": 0.0, "chroma_dc": 0.0, "chroma_ac": 4.0 / 6,
        "dc": 4.0 / 6, "ac": 4.0 / 18, "luma": 4.0 / 16, "chroma": 4.0 / 8, "mse": 8.0 / 24,
    }  # fmt: skip
    assert set(bands) == set(expected)
    for name, value in expected.items():
        assert bands[name].item() == pytest.approx(value), name
    assert "ac" not in TokenLoss(layout=TokenLayout(1))(pred[..., :6], eps[..., :6]).bands


def test_for_codec_gives_the_same_api_for_both_codecs():
    dct = TokenLoss.for_codec(DCTCodec(32, 2, 4), entropy=CIFAR10_ENTROPY)
    torch.testing.assert_close(dct.weights, ebfr_weights(CIFAR10_ENTROPY, TokenLayout(4)))
    assert TokenLoss.for_codec(DCTCodec(32, 2, 4)).weights is None
    pixel = TokenLoss.for_codec(PixelCodec(32, 2))
    pred, eps = torch.randn(2, 256, 12), torch.randn(2, 256, 12)
    out = pixel(pred, eps)
    assert set(out.bands) == {"mse"}
    torch.testing.assert_close(out.per_sample, ((pred - eps) ** 2).mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="EBFR weights need the DCT codec"):
        TokenLoss.for_codec(PixelCodec(32, 2), entropy=CIFAR10_ENTROPY)
    with pytest.raises(ValueError, match="does not match the DCT layout"):
        dct(pred, eps)


def test_diffusion_loss_is_zero_for_the_exact_noise_predictor():
    """x0 = 0 makes x_t = sigma(t) eps, so model(x_t, 999 t) = x_t / sigma(t) predicts eps exactly."""
    schedule = VPSchedule(snr_scale=4.0)
    x0 = torch.zeros(64, 4, 6, dtype=torch.float64)

    def oracle(x_t, timesteps, y):
        return x_t / schedule.sigma(timesteps / network_time(torch.tensor(1.0))).reshape(-1, 1, 1)

    out = diffusion_loss(
        oracle, schedule, x0, TokenLoss(layout=TokenLayout(1)), generator=torch.Generator().manual_seed(0)
    )
    assert out.per_sample.shape == (64,) and out.per_sample.max() < 1e-20


def test_band_mses_stay_float32_under_bf16_autocast():
    """The logged band MSEs come out in float32 under the GPU's bf16 autocast (run here as CPU autocast),
    equal to a float64 loop over the band's dims (before: the band mat-vec ran in bf16, ~3 digits)."""
    layout = TokenLayout(4)
    generator = torch.Generator().manual_seed(0)
    eps_pred, eps = (torch.randn(8, 16, layout.token_dim, generator=generator) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bands = TokenLoss(layout=layout)(eps_pred, eps).bands
    sq = (eps_pred.double() - eps.double()).pow(2)  # [N, L, D]
    for name, mask in layout.band_masks().items():
        expected = sq[..., mask].mean()
        assert bands[name].dtype == torch.float32, name
        assert float(bands[name]) == pytest.approx(float(expected), rel=1e-6), name
