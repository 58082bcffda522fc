"""Image grids for demos, sample previews and comparisons."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dctdiff.infra import storage


def image_grid(rows: list[np.ndarray], padding: int = 2, background: int = 255) -> np.ndarray:
    """Lay out rows of equally sized uint8 images ``rows[i]: [n_i, H, W, 3]`` as one uint8 picture.

    Rows may hold different numbers of images; short rows are left blank on the right.
    """
    if not rows or any(r.ndim != 4 or r.shape[-1] != 3 for r in rows):
        raise ValueError("image_grid needs a non-empty list of [n, H, W, 3] arrays")
    height, width = rows[0].shape[1:3]
    if any(r.shape[1:3] != (height, width) for r in rows):
        raise ValueError("all images in a grid must have the same height and width")
    cols = max(len(r) for r in rows)
    canvas = np.full(
        (padding + len(rows) * (height + padding), padding + cols * (width + padding), 3), background, np.uint8
    )
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = padding + i * (height + padding), padding + j * (width + padding)
            canvas[top : top + height, left : left + width] = image
    return canvas


def save_png(image: np.ndarray, path: str, scale: int = 1) -> None:
    """Write a uint8 [H, W, 3] picture as PNG (a path or URI, atomically), enlarged ``scale`` times."""
    picture = Image.fromarray(image)
    if scale > 1:
        picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    storage.write_bytes(str(path), buffer.getvalue())
