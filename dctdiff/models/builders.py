"""What training, sampling and the MLflow model all build from a config or a checkpoint: the codec, the
U-ViT and the noise schedule of a ``TrainConfig``, and a checkpoint's EMA network (``load_ema_model``)."""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import load as load_tensors

from dctdiff.core.codec import Codec, DCTCodec, PixelCodec, colour_channels
from dctdiff.core.noise_schedule import VPSchedule
from dctdiff.core.token_layout import DEFAULT_COLOUR
from dctdiff.core.uvit import UViT, build_uvit
from dctdiff.models.config import TrainConfig, config_from_dict


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
        grad_checkpoint=m.grad_checkpoint,
        **overrides,
    )


def build_noise_schedule(config: TrainConfig) -> VPSchedule:
    """The VP schedule with the config's SNR scale c (paper §4)."""
    d = config.diffusion
    return VPSchedule(beta_min=d.beta_min, beta_max=d.beta_max, snr_scale=d.snr_scale)


def load_ema_model(checkpoint: str, device: str | torch.device = "cpu") -> tuple[UViT, TrainConfig, dict]:
    """The EMA network of one of our checkpoints (a folder path or URI), with its resolved config and state.json.

    Raises CorruptCheckpointError if state.json or ema.safetensors does not match the manifest.
    """
    from dctdiff.models import checkpoints  # storage (pyarrow): only where checkpoints are read

    files = checkpoints.read_checkpoint_files(str(checkpoint), [checkpoints.STATE, "ema.safetensors"])
    state = checkpoints.read_state(files[checkpoints.STATE], str(checkpoint))
    config = config_from_dict(state["config"])
    codec = checkpoint_codec(config, state)
    model = build_model(config, codec)
    model.load_state_dict(load_tensors(files["ema.safetensors"]))
    return model.to(device).eval(), config, state


def load_ema_sampling(checkpoint: str, device: str | torch.device) -> tuple[UViT, Codec, VPSchedule, TrainConfig]:
    """(EMA network, codec, noise schedule, config) of a checkpoint folder, or of a run folder's newest intact
    checkpoint (``checkpoints.newest_checkpoint``): what the sample job and the MLflow model sample with."""
    from dctdiff.models import checkpoints

    model, config, state = load_ema_model(checkpoints.newest_checkpoint(checkpoint), device)
    return model, checkpoint_codec(config, state), build_noise_schedule(config), config
