"""The training step and its state, independent of Ray: model + EMA + AdamW + warm-up schedule,
counter-based per-sample randomness, and checkpoints as safetensors + JSON (no pickles), with checksums
(``dctdiff.models.checkpoints``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from dctdiff.core.codec import Codec
from dctdiff.core.loss import TokenLoss, diffusion_loss
from dctdiff.core.uvit import UViT
from dctdiff.models.builders import build_noise_schedule
from dctdiff.models.config import OptimConfig, TrainConfig, split_batch
from dctdiff.training.randomness import draw_step, id_keys
from dctdiff.training.step_metrics import StepResult


def ema_decay_at(optim: OptimConfig, update: int) -> float:
    """The EMA decay of the ``update``-th update (1-based): optim.ema_decay, capped by
    (1 + t) / (10 + t) while optim.ema_warmup (a host float: no device sync)."""
    if not optim.ema_warmup:
        return optim.ema_decay
    return min(optim.ema_decay, (1 + update) / (10 + update))


@dataclass
class Batch:
    """One worker's share of a global batch: clean tokens [n, L, D] (any float dtype, any device; the
    trainer converts them on its device), labels [n] or None, the sample ids [n] and their ``id_keys``
    (computed here when not given; ``device_batches.batch_from_rows`` computes them ahead, on the device)."""

    tokens: torch.Tensor
    labels: torch.Tensor | None
    ids: Sequence[str] | np.ndarray
    keys: torch.Tensor | None = None  # int64 [n]

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = id_keys(self.ids)


class Trainer:
    """Model, EMA copy, AdamW with linear warm-up, and one optimisation step (paper §5 recipe).

    ``module`` may be the DDP-wrapped model; ``model`` is always the bare UViT. ``optim.precision`` is the
    autocast on CUDA; a CPU trains in float32 unless ``autocast_on_cpu`` (CPU autocast: slow; it runs the
    GPU path's mixed precision in tests).
    """

    def __init__(
        self,
        config: TrainConfig,
        codec: Codec,
        model: UViT,
        entropy: dict[str, list[float]] | None,
        device: torch.device,
        wrap=lambda model: model,
        autocast_on_cpu: bool = False,
    ) -> None:
        self.config = config
        self.codec = codec
        self.device = device
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.module = wrap(self.model)
        # what the sample grids and FID run: the EMA network, compiled too with model.compile
        self.sampling_model = self.ema
        if config.model.compile:
            self.module = torch.compile(self.module)
            self.sampling_model = torch.compile(self.ema)
        self.noise_schedule = build_noise_schedule(config)
        use_ebfr = config.diffusion.ebfr and codec.layout is not None
        self.loss_fn = TokenLoss.for_codec(codec, entropy if use_ebfr else None)
        o = config.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if name in self.model.no_weight_decay() or param.ndim < 2 else decay).append(param)
        cuda = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            fused=cuda or None,  # one kernel per step on CUDA (no host sync with the GradScaler either)
        )
        # Linear warm-up to the base learning rate, then constant (U-ViT / DCTdiff recipe).
        warmup = o.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.step = 0
        # Seconds spent in training steps so far, over all fits of the run (the worker loop adds each
        # window's; FID, sample grids and start-up are not counted): the x axis of equal wall-clock comparisons.
        self.train_seconds = 0.0
        mixed = cuda or autocast_on_cpu
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.precision) if mixed else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype is torch.float16)
        self._params = list(self.model.parameters())
        self._ema_params = list(self.ema.parameters())

    def train_step(self, batch: Batch) -> StepResult:
        """One step on this worker's share of the global batch, in ``optim.micro_batches`` chunks whose
        gradients accumulate (DDP all-reduces only the last one's); never waits for the device.

        The metrics stay on the device (``MetricWindow`` reduces them and checks the loss is finite).
        """
        config = self.config
        n, chunks = len(batch.ids), config.optim.micro_batches
        size = split_batch(n, 1, chunks).micro_batch  # the rule plan_run checked for the global batch
        draws = draw_step(config.cadence.seed, self.step, batch.keys, self.codec_token_shape, self.device)
        x0 = self._clean_tokens(batch.tokens, draws)  # [n, L, D] float32 on the device
        labels = self._labels(batch.labels, draws)
        self.optimizer.zero_grad(set_to_none=True)
        per_sample, bands = [], []
        for index in range(chunks):
            rows, last = slice(index * size, (index + 1) * size), index == chunks - 1
            with nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync():
                with self._autocast():
                    out = diffusion_loss(
                        self.module, self.noise_schedule, x0[rows], self.loss_fn,
                        None if labels is None else labels[rows], t=draws.t[rows], eps=draws.eps[rows],
                    )  # fmt: skip
                self.scaler.scale(out.per_sample.sum() / n).backward()
            per_sample.append(out.per_sample.detach())
            bands.append(torch.stack(list(out.bands.values())))  # [bands]
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self._params, config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_schedule.step()
        self._update_ema()
        self.step += 1
        losses = torch.cat(per_sample)  # [n]
        values = torch.cat([losses.mean()[None], grad_norm.detach().float()[None], torch.stack(bands).mean(0)])  # [K]
        names = ("loss", "grad_norm", *(f"band/{name}" for name in out.bands))
        return StepResult(values, names, losses, batch.ids, self.step, self.lr_schedule.get_last_lr()[0])

    @property
    def codec_token_shape(self) -> tuple[int, int]:
        """[L, D] of the trained tokens."""
        return self.codec.num_tokens, self.codec.token_dim

    def _clean_tokens(self, tokens: torch.Tensor, draws) -> torch.Tensor:
        """Tokens -> float32 on the device, mirrored where the draws say so (data.hflip)."""
        x0 = tokens.to(self.device, non_blocking=True).to(torch.float32)  # [n, L, D]
        if not self.config.data.hflip:
            return x0
        return torch.where(draws.flip[:, None, None], self.codec.hflip_tokens(x0), x0)

    def _labels(self, labels: torch.Tensor | None, draws) -> torch.Tensor | None:
        """Labels on the device, replaced by the null label with probability data.label_dropout (CFG)."""
        if labels is None:
            return None
        labels = labels.to(self.device, non_blocking=True)
        drop = draws.drop < self.config.data.label_dropout
        return torch.where(drop, torch.full_like(labels, self.model.null_label_index), labels)

    def _autocast(self):
        """Mixed precision of optim.precision on CUDA (and with autocast_on_cpu); else nothing."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * model, one foreach kernel over all parameters."""
        torch._foreach_lerp_(self._ema_params, self._params, 1.0 - ema_decay_at(self.config.optim, self.step + 1))

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_contents(self, extra: dict[str, Any]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """What a checkpoint holds: the live model, EMA and optimiser tensors (on the device, not copied) and
        state.json's content with ``extra`` (resolved config, stats, ...)."""
        optimizer_state = self.optimizer.state_dict()
        tensors = {
            f"{index}.{name}": value
            for index, state in optimizer_state["state"].items()
            for name, value in state.items()
        }
        state = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            # Randomness is counter-based (sample_seed): (seed, step) is the whole RNG state.
            "rng": {"seed": self.config.cadence.seed, "step": self.step},
            "optimizer_param_groups": optimizer_state["param_groups"],
            "lr_schedule": self.lr_schedule.state_dict(),  # lr_lambdas: [None] (the lambda is rebuilt)
            "grad_scaler": self.scaler.state_dict(),
            **extra,
        }
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": tensors}, state

    def save(self, directory: str, extra: dict[str, Any]) -> None:
        """Write ``checkpoint_contents`` now, as a self-verifying checkpoint (``checkpoints.write_checkpoint``;
        the worker loop writes in the background instead: ``checkpoint_writer``)."""
        from dctdiff.models import checkpoints  # storage (pyarrow): only where checkpoints are written

        weights, state = self.checkpoint_contents(extra)
        checkpoints.write_checkpoint(str(directory), {k: _contiguous(v) for k, v in weights.items()}, state)

    def load(self, directory: str) -> dict[str, Any]:
        """Restore everything ``save`` wrote, after verifying every file; returns state.json.

        Raises CorruptCheckpointError for a partial or altered checkpoint.
        """
        from dctdiff.models import checkpoints

        directory = str(directory)
        files = checkpoints.read_checkpoint_files(
            directory, [*(f"{name}.safetensors" for name in checkpoints.TENSOR_FILES), checkpoints.STATE]
        )
        state = checkpoints.read_state(files[checkpoints.STATE], directory)
        self.model.load_state_dict(load_tensors(files["model.safetensors"]))
        self.ema.load_state_dict(load_tensors(files["ema.safetensors"]))
        optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in load_tensors(files["optimizer.safetensors"]).items():
            index, name = key.split(".", 1)
            optimizer_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": state["optimizer_param_groups"]})
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        return state


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
