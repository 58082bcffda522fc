"""Shard rows -> a training ``Batch`` on the device: the host side of the trainer's input path, which the
worker loop runs in the prefetch thread on CUDA (docs/ARCHITECTURE.md, "Training"). It needs only torch and
numpy (``benchmarks.gpu`` feeds its training rows through it, without Ray or pyarrow)."""

from __future__ import annotations

import numpy as np
import torch

from dctdiff.core.codec import Codec, DCTCodec, PixelCodec
from dctdiff.models.config import TrainConfig
from dctdiff.training.randomness import id_keys
from dctdiff.training.trainer import Batch


def batch_from_rows(
    rows: dict[str, np.ndarray], config: TrainConfig, codec: Codec, column: str, device: torch.device
) -> Batch:
    """A worker's share of a global batch of shard rows (``batch_order.worker_batches``) -> clean tokens
    for the codec being trained, on ``device``.

    ``column`` (DatasetInfo.column) is the coefficients, or for the pixel baseline the stored source
    pixels. The values travel to the device as stored (float16 coefficients, only the ``keep`` kept of
    the B^2 per block, or uint8 pixels) and become tokens there; values, labels and id keys go through pinned memory on CUDA, with non-blocking copies.
    On CUDA it runs in the prefetch thread (``prefetched``), a step ahead of the training step.
    """
    ids = np.asarray(rows["id"]).astype(str)  # [n] (no per-sample Python work)
    values = rows[column]  # [n, L, blocks, B^2] coefficients or [n, R, R, C] pixels
    if isinstance(codec, DCTCodec):
        values = values[..., : codec.keep]  # [n, L, blocks, keep]: the dropped frequencies stay on the host
    host = {"values": torch.from_numpy(np.array(values)), "keys": id_keys(ids)}  # a writable copy
    if config.data.class_conditional:
        host["labels"] = torch.from_numpy(rows["label"].astype(np.int64))
    moved = {name: _to_device(tensor, device) for name, tensor in host.items()}
    if isinstance(codec, PixelCodec):
        tokens = codec.encode(moved["values"])  # uint8 [n, R, R, C] -> [n, L, C P^2]: the source pixels
    else:
        tokens = codec.tokens_from_coefficients(moved["values"])  # [n, L, blocks, B^2]: keep m, divide by eta
    return Batch(tokens, moved.get("labels"), ids, moved["keys"])


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory and non-blocking on CUDA."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
