"""The training step and its state, independent of Ray: model + EMA + AdamW + warm-up schedule,
counter-based per-sample randomness, and checkpoints as safetensors + JSON (no pickles)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dctdiff.infra import storage
from dctdiff.core.codec import Codec, DCTCodec, PixelCodec, colour_channels
from dctdiff.core.token_layout import DEFAULT_COLOUR
from dctdiff.training.config import TrainConfig
from dctdiff.core.loss import TokenLoss, diffusion_loss
from dctdiff.core.uvit import UViT, build_uvit
from dctdiff.core.noise_schedule import VPSchedule

CHECKPOINT_VERSION = 1


def build_codec(config: TrainConfig, eta: float, colour: str | None = None) -> Codec:
    """The codec the config asks for (DCT with ``eta``, or the pixel baseline) in colour mode ``colour``
    (the shards' mode: DatasetInfo.colour, state.json); None: data.colour, else ycbcr420."""
    d = config.data
    colour = colour or config.colour or DEFAULT_COLOUR
    if d.space == "pixel":
        return PixelCodec(d.resolution, config.patch_size, channels=colour_channels(colour))
    return DCTCodec(d.resolution, d.block_size, d.keep, eta, colour=colour)


def checkpoint_codec(config: TrainConfig, state: dict[str, Any]) -> Codec:
    """The codec a checkpoint was trained with (state.json's eta and colour; older ones have no colour)."""
    return build_codec(config, state["eta"], state.get("colour"))


def build_model(config: TrainConfig, codec: Codec) -> UViT:
    """The U-ViT of ``config.model`` for the codec's token shape."""
    m = config.model
    overrides = {k: v for k, v in (("embed_dim", m.embed_dim), ("depth", m.depth), ("num_heads", m.num_heads)) if v}
    return build_uvit(
        m.size,
        token_dim=codec.token_dim,
        num_tokens=codec.num_tokens,
        num_classes=config.data.num_classes if config.data.class_conditional else 0,
        mlp_ratio=m.mlp_ratio,
        qkv_bias=m.qkv_bias,
        pos_embed_init=m.pos_embed_init,
        token_grid=codec.grid,
        **overrides,
    )


def build_noise_schedule(config: TrainConfig) -> VPSchedule:
    """The VP schedule with the config's SNR scale c (paper §4)."""
    d = config.diffusion
    return VPSchedule(beta_min=d.beta_min, beta_max=d.beta_max, snr_scale=d.snr_scale)


def sample_seed(seed: int, step: int, sample_id: str) -> int:
    """A 63-bit seed for one training sample at one step.

    All randomness of a sample (t, eps, flip, label drop) comes from this key, so a run's losses do
    not depend on how the global batch is split over workers, and a resumed run repeats the
    uninterrupted run exactly (the RNG "state" is just (seed, step)).
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Batch:
    """One worker's share of a global batch: clean tokens [n, L, D], labels [n] or None, ids."""

    tokens: torch.Tensor
    labels: torch.Tensor | None
    ids: Sequence[str]


@dataclass
class StepDraws:
    """Per-sample random draws of one step: t [n], eps [n, L, D], flip [n] bool, drop [n] uniform."""

    t: torch.Tensor
    eps: torch.Tensor
    flip: torch.Tensor
    drop: torch.Tensor


def draw_step(seed: int, step: int, ids: Sequence[str], token_shape: tuple[int, int]) -> StepDraws:
    """Counter-based draws for the samples ``ids`` at ``step`` (CPU, float32)."""
    t, eps, uniforms = [], [], []
    for sample_id in ids:
        generator = torch.Generator().manual_seed(sample_seed(seed, step, sample_id))
        u = torch.rand(3, generator=generator)  # t, flip, label drop
        t.append(u[0])
        uniforms.append(u[1:])
        eps.append(torch.randn(token_shape, generator=generator))
    u = torch.stack(uniforms)  # [n, 2]
    return StepDraws(torch.stack(t), torch.stack(eps), u[:, 0] < 0.5, u[:, 1])


class Trainer:
    """Model, EMA copy, AdamW with linear warm-up, and one optimisation step (paper §5 recipe).

    ``module`` may be the DDP-wrapped model; ``model`` is always the bare UViT.
    """

    def __init__(
        self,
        config: TrainConfig,
        codec: Codec,
        model: UViT,
        entropy: dict[str, list[float]] | None,
        device: torch.device,
        wrap=lambda model: model,
    ) -> None:
        self.config = config
        self.codec = codec
        self.device = device
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.module = wrap(self.model)
        self.noise_schedule = build_noise_schedule(config)
        use_ebfr = config.diffusion.ebfr and codec.layout is not None
        self.loss_fn = TokenLoss.for_codec(codec, entropy if use_ebfr else None)
        o = config.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if name in self.model.no_weight_decay() or param.ndim < 2 else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
        )
        # Linear warm-up to the base learning rate, then constant (U-ViT / DCTdiff recipe).
        warmup = o.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.step = 0
        cuda = device.type == "cuda"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and o.precision == "fp16")

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One step on this worker's share of the global batch; returns loss metrics for logging.

        Raises FloatingPointError on a NaN/inf loss (the optimiser step is skipped).
        """
        config = self.config
        draws = draw_step(config.cadence.seed, self.step, batch.ids, tuple(batch.tokens.shape[1:]))
        x0 = batch.tokens.to(self.device, torch.float32)  # [n, L, D]
        if config.data.hflip:
            flipped = self.codec.hflip_tokens(x0)
            x0 = torch.where(draws.flip.to(self.device)[:, None, None], flipped, x0)
        labels = batch.labels
        if labels is not None:
            labels = labels.to(self.device)
            drop = draws.drop.to(self.device) < config.data.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.model.null_label_index), labels)
        t = draws.t.to(self.device)
        eps = draws.eps.to(self.device)
        autocast = (
            torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype is not None else nullcontext()
        )
        with autocast:
            out = diffusion_loss(self.module, self.noise_schedule, x0, self.loss_fn, labels, t=t, eps=eps)
        loss = out.per_sample.mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.step + 1}; stopping (the last good checkpoint is kept)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_schedule.step()
        self._update_ema()
        self.step += 1
        metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": self.lr_schedule.get_last_lr()[0]}
        metrics.update({f"band/{name}": value.item() for name, value in out.bands.items()})
        return metrics

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.optim.ema_decay
        for ema_param, param in zip(self.ema.parameters(), self.model.parameters()):
            ema_param.lerp_(param.detach(), 1.0 - decay)

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self, directory: str | Path, extra: dict[str, Any]) -> None:
        """Write model.safetensors, ema.safetensors, optimizer.safetensors and state.json to ``directory``.

        ``extra`` (resolved config, stats, ...) goes into state.json. Files are written under temporary
        names and renamed, so a crash never leaves a half-written file behind.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        optimizer_state = self.optimizer.state_dict()
        tensors = {
            f"{index}.{name}": value.detach().cpu().contiguous()
            for index, state in optimizer_state["state"].items()
            for name, value in state.items()
        }
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            # Randomness is counter-based (sample_seed): (seed, step) is the whole RNG state.
            "rng": {"seed": self.config.cadence.seed, "step": self.step},
            "optimizer_param_groups": optimizer_state["param_groups"],
            "lr_schedule": self.lr_schedule.state_dict(),  # lr_lambdas: [None] (the lambda is rebuilt)
            "grad_scaler": self.scaler.state_dict(),
            **extra,
        }
        for name, weights in (("model", self.model.state_dict()), ("ema", self.ema.state_dict()), ("optimizer", tensors)):
            with storage.atomic_path(str(directory / f"{name}.safetensors")) as (_, path):
                save_file(_contiguous(weights), path)
        storage.write_json(str(directory / "state.json"), state)

    def load(self, directory: str | Path) -> dict[str, Any]:
        """Restore everything ``save`` wrote; returns state.json."""
        directory = Path(directory)
        state = json.loads((directory / "state.json").read_text())
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{directory} is a checkpoint of version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        self.model.load_state_dict(load_file(directory / "model.safetensors", device=str(self.device)))
        self.ema.load_state_dict(load_file(directory / "ema.safetensors", device=str(self.device)))
        tensors = load_file(directory / "optimizer.safetensors", device=str(self.device))
        optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            optimizer_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": state["optimizer_param_groups"]})
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.step = state["step"]
        return state


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def load_ema_model(checkpoint: str, device: str | torch.device = "cpu") -> tuple[UViT, TrainConfig, dict]:
    """The EMA network of one of our checkpoints (a folder path or URI), with its resolved config and state.json."""
    from safetensors.torch import load as load_safetensors_bytes

    from dctdiff.training.config import config_from_dict

    state = storage.read_json(storage.join(str(checkpoint), "state.json"))
    config = config_from_dict(state["config"])
    codec = checkpoint_codec(config, state)
    model = build_model(config, codec)
    model.load_state_dict(load_safetensors_bytes(storage.read_bytes(storage.join(str(checkpoint), "ema.safetensors"))))
    return model.to(device).eval(), config, state
