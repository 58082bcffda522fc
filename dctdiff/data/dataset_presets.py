"""The paper's data settings (docs/ARCHITECTURE.md, "Presets"): image resolution and DCT block size per preset."""

from __future__ import annotations

from dataclasses import dataclass

from dctdiff.core.token_layout import check_token_resolution


@dataclass(frozen=True)
class DataPreset:
    """Resolution R (square) and block size B of a dataset; ``crop_box`` = (top, left, height, width)
    is a fixed crop applied before resizing, where the paper's data pipeline uses one."""

    resolution: int
    block_size: int
    crop_box: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        check_token_resolution(self.resolution, self.resolution, self.block_size)


DATA_PRESETS: dict[str, DataPreset] = {
    "cifar10": DataPreset(32, 2),
    # CelebA 178x218 aligned faces: the 128x128 box centred at (x=89, y=121), as U-ViT's CelebA loader
    # (and DDIM's) crop before resizing to 64.
    "celeba64": DataPreset(64, 2, crop_box=(57, 25, 128, 128)),
    "imagenet64": DataPreset(64, 2),
    "ffhq128": DataPreset(128, 4),
    "ffhq256": DataPreset(256, 4),
    "ffhq512": DataPreset(512, 8),
    "afhq512": DataPreset(512, 8),
    "demo": DataPreset(32, 2),  # the offline photo crops (dctdiff.data.bundled_photos)
    "fmnist": DataPreset(32, 2),  # Fashion-MNIST, 28x28 padded to 32x32 (the fashion-mnist source)
}


def data_preset(name: str) -> DataPreset:
    """The preset called ``name``; an unknown name raises an error listing the known ones."""
    try:
        return DATA_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(DATA_PRESETS)}") from None
