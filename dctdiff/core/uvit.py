"""U-ViT (Bao et al. 2023) on token sequences, compatible with the published DCTdiff checkpoints.

Architecture (docs/ARCHITECTURE.md, "Model"; DCTdiff's libs/uvit.py): a linear token embedding ``proj``, the time
(and, class-conditional, the label) as extra tokens in front of the sequence ([label, time, tokens]),
a learned ``pos_embed`` (initialised here with a 2-D sin-cos embedding of the token grid, see
``sincos_pos_embed``), depth/2 ``in_blocks``, a ``mid_block``, depth/2 ``out_blocks`` that take
the matching in-block output as a long skip (concat + ``skip_linear``), a final LayerNorm ``norm``
and a linear head ``decoder_pred``. Module names and tensor shapes are those of the published code,
so ``UViT.from_official_state_dict`` loads its weights unchanged; the codec (DCT or pixel) only
changes ``token_dim`` and ``num_tokens``.

The pixel-space U-ViT of Bao et al. (the paper's baseline) differs in two places, both handled on
loading: its Conv2d ``patch_embed.proj`` (kernel = stride = P) is the same map as ``proj`` on (p1 p2 c)
pixel tokens, and its optional 3x3 ``final_layer`` conv runs on the unpatchified image (``final_conv``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from safetensors.torch import load_file as load_safetensors
from torch import nn

PUBLISHED_HEAD_DIM = 64  # head width of the published S/M/L configs (U-ViT-H uses 72: pass num_heads)
POS_EMBED_INITS = ("sincos", "normal")


@dataclass(frozen=True)
class UViTConfig:
    """Hyper-parameters of a U-ViT; ``depth`` counts in + out blocks (the mid block comes on top)."""

    token_dim: int
    num_tokens: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    num_classes: int = 0
    null_label: bool = True
    mlp_time_embed: bool = False
    final_conv: bool = False
    grad_checkpoint: bool = False
    pos_embed_init: str = "sincos"
    token_grid: tuple[int, int] | None = None  # (rows, cols) of the tokens; None: square, else one row

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the token grid: ``token_grid``, else square if num_tokens is a square, else one row."""
        if self.token_grid is not None:
            return self.token_grid
        side = math.isqrt(self.num_tokens)
        return (side, side) if side * side == self.num_tokens else (1, self.num_tokens)

    def __post_init__(self) -> None:
        for name in ("token_dim", "num_tokens", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init must be one of {list(POS_EMBED_INITS)}, got {self.pos_embed_init!r}")
        if self.pos_embed_init == "sincos":
            check_sincos_width(self.embed_dim)
        if self.token_grid is not None and math.prod(self.token_grid) != self.num_tokens:
            raise ValueError(f"token_grid {self.token_grid} does not hold num_tokens={self.num_tokens} tokens")
        if self.depth % 2:
            raise ValueError(f"depth must be even (depth/2 in-blocks and depth/2 out-blocks), got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.final_conv:
            patch, grid = math.isqrt(self.token_dim // 3), math.isqrt(self.num_tokens)
            if 3 * patch * patch != self.token_dim or grid * grid != self.num_tokens:
                raise ValueError(
                    "final_conv needs RGB pixel tokens (token_dim = 3 P^2) on a square grid (num_tokens = g^2), "
                    f"got token_dim={self.token_dim}, num_tokens={self.num_tokens}"
                )


# Width, depth, heads of the registered sizes (docs/ARCHITECTURE.md, "Model"; S/M/L are U-ViT's small/mid/large).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=2),
    "S": dict(embed_dim=512, depth=12, num_heads=8),
    "M": dict(embed_dim=768, depth=16, num_heads=12),
    "L": dict(embed_dim=1024, depth=20, num_heads=16),
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps [N] -> [N, dim]: [cos(t f_i), sin(t f_i)], as U-ViT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]  # [N, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def check_sincos_width(embed_dim: int) -> None:
    """Raise ValueError unless ``embed_dim`` is divisible by 4 (a sin and a cos for each grid axis)."""
    if embed_dim % 4:
        raise ValueError(
            f"the 2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}: change embed_dim "
            "or use pos_embed_init=normal"
        )


def sincos_pos_embed(rows: int, cols: int, dim: int) -> torch.Tensor:
    """2-D sin-cos position embedding of a rows x cols token grid (raster order) -> [rows * cols, dim].

    The first half of the channels encodes the row, the second half the column, each as
    [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim/4)) (Vaswani et al. 2017; MAE's 2-D form).
    ``dim`` must be a multiple of 4.
    """
    check_sincos_width(dim)
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # [dim/4]
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1).double() * omega[None]  # [rows * cols, dim/4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # [rows * cols, dim/2]

    return torch.cat([encode(row), encode(col)], dim=1).float()  # [rows * cols, dim]


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, laid out (3, heads, head_dim)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [N, H, L, Dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, L, Dh]
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """Two-layer GELU MLP (timm's ``Mlp`` names: fc1, fc2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; out-blocks first fuse the long skip: x = skip_linear([x, skip])."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """U-ViT noise predictor on tokens: ``forward(x [N, L, D], timesteps [N] (= 999 t), y [N] | None)``.

    Class-conditional models (``num_classes > 0``) hold ``num_classes + 1`` label embeddings when
    ``null_label`` is set; the last one (index ``num_classes``) is the "no label" input used for
    classifier-free guidance (``null_label_index``).
    """

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        num_classes: int = 0,
        null_label: bool = True,
        mlp_time_embed: bool = False,
        final_conv: bool = False,
        grad_checkpoint: bool = False,
        pos_embed_init: str = "sincos",
        token_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.config = UViTConfig(
            token_dim=token_dim,
            num_tokens=num_tokens,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            num_classes=num_classes,
            null_label=null_label,
            mlp_time_embed=mlp_time_embed,
            final_conv=final_conv,
            grad_checkpoint=grad_checkpoint,
            pos_embed_init=pos_embed_init,
            token_grid=token_grid,
        )
        self.embed_dim = embed_dim
        self.proj = nn.Linear(token_dim, embed_dim)
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed
            else nn.Identity()
        )
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes + int(null_label), embed_dim)
        self.extras = 2 if num_classes > 0 else 1  # [label,] time tokens in front of the sequence
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_tokens, embed_dim))

        def block(skip: bool) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip)

        self.in_blocks = nn.ModuleList([block(skip=False) for _ in range(depth // 2)])
        self.mid_block = block(skip=False)
        self.out_blocks = nn.ModuleList([block(skip=True) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, token_dim)
        if final_conv:
            self.final_layer = nn.Conv2d(3, 3, kernel_size=3, padding=1)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if pos_embed_init == "sincos":
            # U-ViT starts from a small random pos_embed, so a short run has not yet learnt which tokens
            # are neighbours (samples come out as a patchwork of tokens); the 2-D sin-cos start gives
            # that from step 0. The extra (time, label) tokens keep the random start.
            with torch.no_grad():
                self.pos_embed[0, self.extras :] = sincos_pos_embed(*self.config.grid, embed_dim)
        self.apply(_init_weights)

    @property
    def null_label_index(self) -> int | None:
        """Label index meaning "no label" (classifier-free guidance), or None if the model has none."""
        cfg = self.config
        return cfg.num_classes if cfg.num_classes > 0 and cfg.null_label else None

    def no_weight_decay(self) -> set[str]:
        """Parameter names the published recipe excludes from weight decay."""
        return {"pos_embed"}

    def _run_block(self, blk: Block, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.grad_checkpoint and self.training:
            return torch.utils.checkpoint.checkpoint(blk, x, skip, use_reentrant=False)
        return blk(x, skip)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens x [N, L, token_dim], network times [N] (999 t), labels y [N] -> eps prediction [N, L, token_dim]."""
        cfg = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.num_tokens, cfg.token_dim):
            raise ValueError(f"x must have shape [N, {cfg.num_tokens}, {cfg.token_dim}], got {list(x.shape)}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {list(timesteps.shape)}")
        if (y is None) != (cfg.num_classes == 0):
            raise ValueError(
                "class-conditional model needs labels y [N] (use null_label_index for 'no label')"
                if y is None
                else "unconditional model (num_classes=0) got labels y; pass y=None"
            )
        h = self.proj(x)  # [N, L, E]
        time_token = self.time_embed(timestep_embedding(timesteps, self.embed_dim).to(h.dtype))
        extra = [time_token[:, None]]  # [N, 1, E]
        if y is not None:
            extra.insert(0, self.label_emb(y)[:, None])
        h = torch.cat([*extra, h], dim=1) + self.pos_embed  # [N, extras + L, E]

        skips = []
        for blk in self.in_blocks:
            h = self._run_block(blk, h)
            skips.append(h)
        h = self._run_block(self.mid_block, h)
        for blk in self.out_blocks:
            h = self._run_block(blk, h, skips.pop())
        h = self.decoder_pred(self.norm(h))[:, self.extras :]  # [N, L, token_dim]
        return self._final_conv(h) if cfg.final_conv else h

    def _final_conv(self, tokens: torch.Tensor) -> torch.Tensor:
        """U-ViT's 3x3 conv on the image: tokens [N, g*g, P*P*3] (p1 p2 c) -> image -> conv -> tokens."""
        n, length, dim = tokens.shape
        g, p = math.isqrt(length), math.isqrt(dim // 3)
        image = tokens.reshape(n, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, g * p, g * p)
        image = self.final_layer(image)  # [N, 3, H, W]
        return image.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, length, dim)

    @classmethod
    def from_official_state_dict(
        cls, state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, null_label: bool = False
    ) -> UViT:
        """Build a UViT from a published DCTdiff or pixel U-ViT state dict, configuration inferred from shapes.

        ``num_heads`` defaults to embed_dim / 64 (the published head width). The published class-conditional
        models have exactly ``num_classes`` label embeddings; pass ``null_label=True`` when the last row is a
        "no label" embedding (a checkpoint trained for classifier-free guidance, e.g. one saved by this package).
        """
        state_dict = _conv_patch_embed_to_linear(_strip_wrapper_prefixes(state_dict))
        for key in ("proj.weight", "pos_embed", "decoder_pred.weight", "in_blocks.0.mlp.fc1.weight"):
            if key not in state_dict:
                raise ValueError(f"not a DCTdiff/U-ViT state dict: missing {key!r} (keys: {sorted(state_dict)[:8]}...)")
        embed_dim, token_dim = state_dict["proj.weight"].shape
        labels = state_dict.get("label_emb.weight")
        extras = 1 if labels is None else 2
        depth = 2 * sum(1 for k in state_dict if k.startswith("in_blocks.") and k.endswith(".norm1.weight"))
        if num_heads is None:
            if embed_dim % PUBLISHED_HEAD_DIM:
                raise ValueError(f"embed_dim {embed_dim} is not a multiple of 64: pass num_heads explicitly")
            num_heads = embed_dim // PUBLISHED_HEAD_DIM
        num_classes = 0 if labels is None else labels.shape[0] - int(null_label)
        model = cls(
            token_dim=int(token_dim),
            num_tokens=state_dict["pos_embed"].shape[1] - extras,
            embed_dim=int(embed_dim),
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=state_dict["in_blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
            qkv_bias="in_blocks.0.attn.qkv.bias" in state_dict,
            num_classes=num_classes,
            null_label=null_label and labels is not None,
            mlp_time_embed="time_embed.0.weight" in state_dict,
            final_conv="final_layer.weight" in state_dict,
            pos_embed_init="normal",  # overwritten by the loaded pos_embed
        )
        model.load_state_dict(state_dict, strict=True)
        return model


def _init_weights(module: nn.Module) -> None:
    """U-ViT init: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _conv_patch_embed_to_linear(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pixel U-ViT: Conv2d ``patch_embed.proj`` [E, C, P, P] -> Linear ``proj`` [E, P*P*C] on (p1 p2 c) tokens."""
    if "patch_embed.proj.weight" not in state_dict:
        return state_dict
    out = {k: v for k, v in state_dict.items() if not k.startswith("patch_embed.")}
    conv = state_dict["patch_embed.proj.weight"]
    out["proj.weight"] = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)
    out["proj.bias"] = state_dict["patch_embed.proj.bias"]
    return out


def _strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the key prefixes that DDP ('module.') and torch.compile ('_orig_mod.') add."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def build_uvit(size: str, token_dim: int, num_tokens: int, num_classes: int = 0, **overrides) -> UViT:
    """A registered size ('tiny', 'S', 'M', 'L') for the codec's token_dim / num_tokens; overrides win."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    unknown = set(overrides) - set(UViTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown UViT options {sorted(unknown)}; valid: {sorted(UViTConfig.__dataclass_fields__)}")
    kwargs = {**MODEL_SIZES[size], **overrides}
    return UViT(token_dim=token_dim, num_tokens=num_tokens, num_classes=num_classes, **kwargs)


def load_official_checkpoint(path: str | Path, num_heads: int | None = None, null_label: bool = False) -> UViT:
    """Load a published DCTdiff / U-ViT ``nnet*.pth`` (torch.load with weights_only=True) or a ``.safetensors``.

    Never unpickles arbitrary objects. See ``UViT.from_official_state_dict`` for the arguments.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict = load_safetensors(str(path), device="cpu")
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (an nnet.pth / nnet_ema.pth file)")
    return UViT.from_official_state_dict(state_dict, num_heads=num_heads, null_label=null_label)
