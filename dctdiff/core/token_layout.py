"""The DCT token layout, defined once for the codec, the statistics, the loss and the shards
(docs/ARCHITECTURE.md, "Codec"): which plane each block of a token belongs to, how a token's
dimensions are ordered, and which image sizes make whole tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

PLANES = ("Y", "Cb", "Cr")
# The six B x B blocks of one 2B x 2B region, in token order (4:2:0): Y(2r,2c), Y(2r,2c+1), Y(2r+1,2c),
# Y(2r+1,2c+1), Cb(r,c), Cr(r,c) in block coordinates.
YCBCR_420_BLOCKS = ("Y", "Y", "Y", "Y", "Cb", "Cr")
# Horizontal flip inside a token: the left and right Y blocks trade places; chroma blocks stay.
YCBCR_420_HFLIP = (1, 0, 3, 2, 4, 5)
# Grey mode: the four Y blocks of a 2B x 2B region (same order), no chroma; the flip swaps them the same way.
GREY_BLOCKS = ("Y", "Y", "Y", "Y")
GREY_HFLIP = (1, 0, 3, 2)
# The colour modes of the DCT codec (docs/ARCHITECTURE.md, "Codec"): name -> (blocks, hflip order).
COLOUR_MODES = {"ycbcr420": (YCBCR_420_BLOCKS, YCBCR_420_HFLIP), "grey": (GREY_BLOCKS, GREY_HFLIP)}
DEFAULT_COLOUR = "ycbcr420"
AUTO_COLOUR = "auto"  # prepare --colour and data.colour: the mode follows the data (docs/ARCHITECTURE.md, "Shards")


def check_colour(colour: str) -> str:
    """Return ``colour`` if it names a colour mode, else raise ValueError listing them."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {', '.join(COLOUR_MODES)}, got {colour!r}")
    return colour


def check_token_resolution(height: int, width: int, block_size: int) -> None:
    """Raise ValueError unless both sides are positive multiples of 2B (one token covers 2B x 2B pixels)."""
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    multiple = 2 * int(block_size)
    for name, size in (("height", height), ("width", width)):
        if size <= 0 or size % multiple:
            lower = max(multiple, size - size % multiple)
            raise ValueError(
                f"image {name} {size} must be a positive multiple of 2 x block size = {multiple} "
                f"(one token covers 2B x 2B pixels): use e.g. {lower} or {lower + multiple}"
            )


@dataclass(frozen=True)
class TokenLayout:
    """A token holds ``len(blocks)`` blocks of ``keep`` zigzag frequencies each, block-major:
    [block 0: f0..f(keep-1), block 1: ..., ...]; ``blocks`` names each block's plane."""

    keep: int
    blocks: tuple[str, ...] = YCBCR_420_BLOCKS

    @classmethod
    def for_colour(cls, colour: str, keep: int) -> "TokenLayout":
        """The layout of a colour mode (a key of COLOUR_MODES)."""
        return cls(keep, COLOUR_MODES[check_colour(colour)][0])

    def __post_init__(self) -> None:
        if not isinstance(self.keep, (int, np.integer)) or self.keep < 1:
            raise ValueError(f"keep must be a positive int, got {self.keep!r}")
        known = {name: blocks for name, (blocks, _) in COLOUR_MODES.items()}
        if tuple(self.blocks) not in known.values():
            raise ValueError(f"blocks must be those of a colour mode {known}, got {self.blocks!r}")

    @property
    def blocks_per_token(self) -> int:
        """Blocks in one token (6 for YCbCr 4:2:0, 4 for grey)."""
        return len(self.blocks)

    @property
    def colour(self) -> str:
        """The colour mode whose blocks these are."""
        return next(name for name, (blocks, _) in COLOUR_MODES.items() if blocks == self.blocks)

    @property
    def hflip_order(self) -> tuple[int, ...]:
        """Block permutation of a horizontal flip inside a token (left and right Y blocks swap)."""
        return COLOUR_MODES[self.colour][1]

    @property
    def token_dim(self) -> int:
        """blocks_per_token * keep."""
        return self.blocks_per_token * self.keep

    @property
    def planes(self) -> tuple[str, ...]:
        """The planes present, in PLANES order."""
        return tuple(p for p in PLANES if p in self.blocks)

    def block_plane_index(self) -> np.ndarray:
        """Index into ``self.planes`` of each block: int64 [blocks_per_token]."""
        return np.array([self.planes.index(p) for p in self.blocks], dtype=np.int64)

    def band_masks(self) -> dict[str, torch.Tensor]:
        """Boolean masks [token_dim]: luma/chroma x DC/AC and their unions (the loss's bands)."""
        block = torch.arange(self.token_dim) // self.keep  # which block of the token
        freq = torch.arange(self.token_dim) % self.keep  # zigzag index inside the block; 0 is DC
        luma = torch.tensor([self.blocks[int(b)] == "Y" for b in block])
        dc = freq == 0
        masks = {"luma": luma, "chroma": ~luma, "dc": dc, "luma_dc": luma & dc, "chroma_dc": ~luma & dc}
        if self.keep > 1:
            masks.update(ac=~dc, luma_ac=luma & ~dc, chroma_ac=~luma & ~dc)
        return {name: mask for name, mask in masks.items() if mask.any()}

    def spread(self, per_plane: Mapping[str, Sequence[float]]) -> torch.Tensor:
        """Per-plane values of the first ``keep`` frequencies -> one value per token dim [token_dim] (float64)."""
        return torch.cat([torch.as_tensor(list(per_plane[p])[: self.keep], dtype=torch.float64) for p in self.blocks])
