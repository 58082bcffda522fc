"""The codec round trip as a picture: photo crops decoded after keeping 1..B*B frequencies per block,
one labelled row per (block size B, keep), and its PSNR table (`dctdiff demo`, `make docs-images`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dctdiff.core.codec import DCTCodec
from dctdiff.core.image_metrics import psnr
from dctdiff.evaluation.image_grid import labelled_grid


@dataclass(frozen=True)
class CodecRow:
    """One round trip: block size, keep, token shape, mean PSNR and the decoded images."""

    block_size: int
    keep: int
    tokens: int
    token_dim: int
    psnr: float
    images: np.ndarray


def all_keeps(block_size: int) -> tuple[int, ...]:
    """Every keep of a block size: 1..B*B."""
    return tuple(range(1, block_size * block_size + 1))


# The rows the demo prints and the README's grid shows: every keep of B = 2, powers of two for B = 4
SHOWN_KEEPS = {2: all_keeps(2), 4: (1, 2, 4, 8, 16)}


def round_trips(
    originals: np.ndarray, block_sizes: tuple[int, ...], keeps: dict[int, tuple[int, ...]] | None = None
) -> list[CodecRow]:
    """``originals`` (uint8 [N, R, R, 3]) through the codec for each block size and keep
    (``keeps[B]``, default all of them)."""
    resolution = originals.shape[1]
    rows = []
    for block in block_sizes:
        for keep in (keeps or {}).get(block, all_keeps(block)):
            codec = DCTCodec(resolution, block, keep)
            decoded = codec.decode(codec.encode(originals)).numpy()
            value = float(psnr(originals, decoded).mean())
            rows.append(CodecRow(block, keep, codec.num_tokens, codec.token_dim, value, decoded))
    return rows


def psnr_table(rows: list[CodecRow]) -> str:
    """The round trips as a text table."""
    lines = [f"{'block':>5} {'keep':>4} {'tokens':>6} {'dim':>4} {'PSNR dB':>8}"]
    lines += [f"{r.block_size:>5} {r.keep:>4} {r.tokens:>6} {r.token_dim:>4} {r.psnr:>8.2f}" for r in rows]
    return "\n".join(lines)


def codec_grid(originals: np.ndarray, rows: list[CodecRow], scale: int = 1) -> np.ndarray:
    """The originals, then one row per round trip, each labelled with its B, keep and PSNR."""
    labels = ["original"] + [f"B={r.block_size}, keep={r.keep}: {r.psnr:.1f} dB" for r in rows]
    return labelled_grid([originals] + [r.images for r in rows], labels, scale)
