"""U-ViT: shapes, published-checkpoint compatibility (against a plain re-implementation), labels, training."""

import math
import pickle

import einops
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dctdiff.core.loss import TokenLoss, diffusion_loss
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.token_layout import TokenLayout
from dctdiff.core.uvit import (
    MODEL_SIZES,
    UViT,
    build_uvit,
    load_official_checkpoint,
    sincos_pos_embed,
    timestep_embedding,
)


def official_state_dict(
    embed_dim=128,
    depth=4,
    token_dim=24,
    tokens=16,
    num_classes=0,
    mlp_time_embed=False,
    qkv_bias=False,
    hidden=512,
    pixel_patch=None,
    seed=0,
) -> dict:
    """A state dict laid out by hand like the published DCTdiff libs/uvit.py (names and shapes), or with
    ``pixel_patch`` = P like the pixel U-ViT of baofff/U-ViT (Conv2d patch_embed, 3x3 final_layer conv)."""
    gen = torch.Generator().manual_seed(seed)
    d = embed_dim

    def rand(*shape, scale=0.05, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=gen)

    sd = {"pos_embed": rand(1, (2 if num_classes else 1) + tokens, d, scale=0.02)}
    if pixel_patch:
        sd["patch_embed.proj.weight"] = rand(d, 3, pixel_patch, pixel_patch, scale=0.2)
        sd["patch_embed.proj.bias"] = rand(d)
        sd["final_layer.weight"], sd["final_layer.bias"] = rand(3, 3, 3, 3, scale=0.2), rand(3)
    else:
        sd["proj.weight"], sd["proj.bias"] = rand(d, token_dim), rand(d)
    if mlp_time_embed:
        sd["time_embed.0.weight"], sd["time_embed.0.bias"] = rand(4 * d, d), rand(4 * d)
        sd["time_embed.2.weight"], sd["time_embed.2.bias"] = rand(d, 4 * d), rand(d)
    if num_classes:
        sd["label_emb.weight"] = rand(num_classes, d, scale=1.0)
    blocks = [(f"in_blocks.{i}", False) for i in range(depth // 2)] + [("mid_block", False)]
    blocks += [(f"out_blocks.{i}", True) for i in range(depth // 2)]
    for name, skip in blocks:
        sd[f"{name}.norm1.weight"], sd[f"{name}.norm1.bias"] = rand(d, scale=0.1, offset=1.0), rand(d)
        sd[f"{name}.attn.qkv.weight"] = rand(3 * d, d, scale=0.1)
        if qkv_bias:
            sd[f"{name}.attn.qkv.bias"] = rand(3 * d)
        sd[f"{name}.attn.proj.weight"], sd[f"{name}.attn.proj.bias"] = rand(d, d), rand(d)
        sd[f"{name}.norm2.weight"], sd[f"{name}.norm2.bias"] = rand(d, scale=0.1, offset=1.0), rand(d)
        sd[f"{name}.mlp.fc1.weight"], sd[f"{name}.mlp.fc1.bias"] = rand(hidden, d), rand(hidden)
        sd[f"{name}.mlp.fc2.weight"], sd[f"{name}.mlp.fc2.bias"] = rand(d, hidden), rand(d)
        if skip:
            sd[f"{name}.skip_linear.weight"], sd[f"{name}.skip_linear.bias"] = rand(d, 2 * d), rand(d)
    sd["norm.weight"], sd["norm.bias"] = rand(d, scale=0.1, offset=1.0), rand(d)
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = rand(token_dim, d), rand(token_dim)
    return sd


def reference_forward(sd: dict, embedded, timesteps, y, num_heads: int):
    """Plain re-implementation of the published U-ViT forward after the token embedding (``embedded``
    [N, L, E]), explicit softmax attention, from raw tensors -> decoder output [N, L, token_dim]."""
    sd = {k: v.double() for k, v in sd.items()}
    lin = lambda h, name: h @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if f"{name}.bias" in sd else 0)  # noqa: E731

    def layer_norm(h, name):
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    def attention(h, name):
        n, length, d = h.shape
        q, k, v = lin(h, f"{name}.qkv").reshape(n, length, 3, num_heads, d // num_heads).unbind(2)  # [N, L, H, Dh]
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d // num_heads)
        out = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v).reshape(n, length, d)
        return lin(out, f"{name}.proj")

    def block(h, name, skip=None):
        if skip is not None:
            h = lin(torch.cat([h, skip], -1), f"{name}.skip_linear")
        h = h + attention(layer_norm(h, f"{name}.norm1"), f"{name}.attn")
        gelu = lambda u: 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))  # noqa: E731
        return h + lin(gelu(lin(layer_norm(h, f"{name}.norm2"), f"{name}.mlp.fc1")), f"{name}.mlp.fc2")

    half = embedded.shape[-1] // 2
    # the published embedding is computed in float32 (timesteps.float()), whatever the model dtype
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1).double()
    if "time_embed.0.weight" in sd:
        temb = lin(F.silu(lin(temb, "time_embed.0")), "time_embed.2")
    extra = [temb[:, None]] if y is None else [sd["label_emb.weight"][y][:, None], temb[:, None]]
    h = torch.cat([*extra, embedded.double()], 1) + sd["pos_embed"]
    depth = 2 * sum(k.startswith("in_blocks.") and k.endswith("norm1.weight") for k in sd)
    skips = []
    for i in range(depth // 2):
        h = block(h, f"in_blocks.{i}")
        skips.append(h)
    h = block(h, "mid_block")
    for i in range(depth // 2):
        h = block(h, f"out_blocks.{i}", skips.pop())
    return lin(layer_norm(h, "norm"), "decoder_pred")[:, len(extra) :]


class Payload:
    """An arbitrary object: loading a pickle that holds it must be refused, not executed."""


CASES = [
    dict(),
    dict(num_classes=10, mlp_time_embed=True),
    dict(embed_dim=192, depth=2, qkv_bias=True, hidden=576, num_classes=3),
]


@pytest.mark.parametrize("case", CASES)
def test_official_state_dict_loads_round_trips_and_matches_reference(case):
    sd = official_state_dict(**case)
    model = UViT.from_official_state_dict(sd)
    cfg = model.config
    assert cfg.embed_dim == case.get("embed_dim", 128) and cfg.depth == case.get("depth", 4)
    assert cfg.num_heads == cfg.embed_dim // 64 and cfg.num_tokens == 16 and cfg.token_dim == 24
    assert cfg.num_classes == case.get("num_classes", 0) and cfg.qkv_bias == case.get("qkv_bias", False)
    assert cfg.mlp_ratio * cfg.embed_dim == case.get("hidden", 512)
    assert model.null_label_index is None  # published models have no extra null embedding
    out_sd = model.state_dict()
    assert set(out_sd) == set(sd)
    assert all(torch.equal(out_sd[k], sd[k]) for k in sd)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, 24, generator=gen, dtype=torch.float64)
    timesteps = torch.tensor([0.0, 412.3, 999.0], dtype=torch.float64)
    y = torch.tensor([0, 2, 1]) if cfg.num_classes else None
    with torch.no_grad():
        out = model.double().eval()(x, timesteps, y)
    embedded = x @ sd["proj.weight"].double().T + sd["proj.bias"].double()
    expected = reference_forward(sd, embedded, timesteps, y, cfg.num_heads)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_pixel_uvit_checkpoint_matches_the_published_image_forward():
    """baofff/U-ViT pixel model: Conv2d patch embedding and a 3x3 conv on the unpatchified output."""
    p, grid = 2, 4
    sd = official_state_dict(token_dim=3 * p * p, tokens=grid * grid, pixel_patch=p, num_classes=2)
    model = UViT.from_official_state_dict(sd).double().eval()
    assert model.config.final_conv and model.config.token_dim == 12 and model.config.num_tokens == 16
    images = torch.randn(2, 3, grid * p, grid * p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    timesteps, y = torch.tensor([10.0, 900.0], dtype=torch.float64), torch.tensor([1, 0])
    sdd = {k: v.double() for k, v in sd.items()}
    embedded = F.conv2d(images, sdd["patch_embed.proj.weight"], sdd["patch_embed.proj.bias"], stride=p)
    decoded = reference_forward(sd, embedded.flatten(2).transpose(1, 2), timesteps, y, num_heads=2)
    unpatchify = "B (h w) (p1 p2 C) -> B C (h p1) (w p2)"  # the published unpatchify
    expected = F.conv2d(
        einops.rearrange(decoded, unpatchify, h=grid, p1=p, p2=p),
        sdd["final_layer.weight"],
        sdd["final_layer.bias"],
        padding=1,
    )
    tokens = einops.rearrange(images, "B C (h p1) (w p2) -> B (h w) (p1 p2 C)", p1=p, p2=p)  # PixelCodec layout
    with torch.no_grad():
        out = einops.rearrange(model(tokens, timesteps, y), unpatchify, h=grid, p1=p, p2=p)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_checkpoint_files_load_without_unpickling(tmp_path):
    sd = official_state_dict(num_classes=5)
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "nnet_ema.pth")  # DDP-prefixed keys
    save_file(sd, str(tmp_path / "nnet.safetensors"))
    for name in ("nnet_ema.pth", "nnet.safetensors"):
        model = load_official_checkpoint(tmp_path / name, null_label=True)
        assert model.config.num_classes == 4 and model.null_label_index == 4
        assert torch.equal(model.state_dict()["label_emb.weight"], sd["label_emb.weight"])
    assert load_official_checkpoint(tmp_path / "nnet.safetensors", num_heads=4).config.num_heads == 4

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"proj.weight": Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_official_checkpoint(tmp_path / "evil.pth")


def test_unsupported_state_dicts_give_clear_errors():
    sd = official_state_dict()
    with pytest.raises(ValueError, match="final_conv needs RGB pixel tokens"):
        UViT.from_official_state_dict({**sd, "final_layer.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(ValueError, match="missing 'proj.weight'"):
        UViT.from_official_state_dict({k: v for k, v in sd.items() if k != "proj.weight"})
    with pytest.raises(ValueError, match="pass num_heads"):
        UViT.from_official_state_dict(official_state_dict(embed_dim=96, hidden=384))


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [[math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs] for t in (0.0, 500.0)]
    torch.testing.assert_close(emb, torch.tensor(expected))


def test_shape_determinism_and_batch_independence():
    torch.manual_seed(0)
    model = build_uvit("tiny", token_dim=24, num_tokens=64).eval()
    x, t = torch.randn(5, 64, 24), torch.rand(5) * 999
    with torch.no_grad():
        out = model(x, t)
        assert out.shape == (5, 64, 24)
        assert torch.equal(out, model(x, t))
        torch.testing.assert_close(out[2:3], model(x[2:3], t[2:3]))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 64, 24\]"):
        model(x[:, :10], t)
    with pytest.raises(ValueError, match="unconditional model"):
        model(x, t, torch.zeros(5, dtype=torch.long))


def test_null_label_path():
    torch.manual_seed(0)
    model = build_uvit("tiny", token_dim=12, num_tokens=16, num_classes=10).eval()
    assert model.label_emb.num_embeddings == 11 and model.null_label_index == 10
    x, t = torch.randn(2, 16, 12), torch.full((2,), 500.0)
    with torch.no_grad():
        null = model(x, t, torch.full((2,), 10))
        labelled = model(x, t, torch.tensor([3, 3]))
    assert null.shape == (2, 16, 12) and not torch.allclose(null, labelled)
    with pytest.raises(ValueError, match="needs labels"):
        model(x, t)
    with pytest.raises(IndexError):
        model(x, t, torch.full((2,), 11))


def test_registry_matches_published_sizes():
    """U-ViT paper Table: S 44M, M 131M, L 287M parameters (small token embeddings add little)."""
    for size, published in (("S", 44e6), ("M", 131e6), ("L", 287e6)):
        with torch.device("meta"):
            model = build_uvit(size, token_dim=24, num_tokens=256)
        assert model.config.embed_dim == MODEL_SIZES[size]["embed_dim"]
        assert abs(sum(p.numel() for p in model.parameters()) / published - 1) < 0.01
    with pytest.raises(ValueError, match="unknown model size 'XL'"):
        build_uvit("XL", 24, 64)
    with pytest.raises(ValueError, match="unknown UViT options"):
        build_uvit("tiny", 24, 64, width=3)
    with pytest.raises(ValueError, match="depth must be even"):
        build_uvit("tiny", 24, 64, depth=3)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_uvit("tiny", token_dim=24, num_tokens=16)
    ckpt = build_uvit("tiny", token_dim=24, num_tokens=16, grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 16, 24), torch.rand(2) * 999
    for model in (plain, ckpt):
        model(x, t).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("pos_embed_init", ["sincos", "normal"])
def test_tiny_model_overfits_a_single_batch(pos_embed_init):
    """Fixed (x0, t, eps): the eps-prediction loss of a tiny U-ViT must fall at least 10x."""
    torch.manual_seed(0)
    model = build_uvit("tiny", token_dim=24, num_tokens=16, num_classes=4, pos_embed_init=pos_embed_init)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x0, labels = 0.5 * torch.randn(8, 16, 24), torch.arange(8) % 5
    loss_fn, schedule = TokenLoss(layout=TokenLayout(4)), VPSchedule(snr_scale=4.0)
    losses = []
    for _ in range(80):
        loss = diffusion_loss(model, schedule, x0, loss_fn, labels, torch.Generator().manual_seed(7))
        opt.zero_grad()
        loss.per_sample.mean().backward()
        opt.step()
        losses.append(loss.per_sample.mean().item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])


def test_sincos_pos_embed_matches_the_formula():
    """Channel k < d/4 of token (r, c) is sin(r w_k), then cos(r w_k), sin(c w_k), cos(c w_k), w_k = 10000^(-k/(d/4))."""
    rows, cols, dim = 3, 5, 16
    embed = sincos_pos_embed(rows, cols, dim)
    assert embed.shape == (rows * cols, dim)
    q = dim // 4
    for r in range(rows):
        for c in range(cols):
            expected = [math.sin(r * 10000 ** (-k / q)) for k in range(q)]
            expected += [math.cos(r * 10000 ** (-k / q)) for k in range(q)]
            expected += [math.sin(c * 10000 ** (-k / q)) for k in range(q)]
            expected += [math.cos(c * 10000 ** (-k / q)) for k in range(q)]
            torch.testing.assert_close(embed[r * cols + c], torch.tensor(expected), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(2, 2, 10)


def test_pos_embed_init_follows_the_token_grid():
    """The token part of pos_embed starts as the grid's sin-cos embedding (raster order); extra tokens stay small
    and random; 'normal' keeps U-ViT's random start; a non-square grid is taken from token_grid."""
    model = build_uvit("tiny", token_dim=24, num_tokens=8, num_classes=3, token_grid=(2, 4))
    assert model.extras == 2
    torch.testing.assert_close(model.pos_embed[0, 2:].detach(), sincos_pos_embed(2, 4, 64))
    assert model.pos_embed[0, :2].abs().max() < 0.1
    square = build_uvit("tiny", token_dim=24, num_tokens=16)
    torch.testing.assert_close(square.pos_embed[0, 1:].detach(), sincos_pos_embed(4, 4, 64))
    random_start = build_uvit("tiny", token_dim=24, num_tokens=16, pos_embed_init="normal")
    assert random_start.pos_embed.std() < 0.03  # trunc_normal(std 0.02)
    with pytest.raises(ValueError, match="token_grid"):
        build_uvit("tiny", token_dim=24, num_tokens=16, token_grid=(3, 4))
    with pytest.raises(ValueError, match="pos_embed_init"):
        build_uvit("tiny", token_dim=24, num_tokens=16, pos_embed_init="learned")
