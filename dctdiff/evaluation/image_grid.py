"""Image grids for demos, sample previews and comparisons; matplotlib figures as PNG."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def sample_grid(images: np.ndarray, columns: int = 8, rows: int = 8) -> np.ndarray:
    """The first ``columns * rows`` of ``images`` (uint8 [N, H, W, 3]) as a grid, ``columns`` per row."""
    shown = images[: columns * rows]
    return image_grid([shown[i : i + columns] for i in range(0, len(shown), columns)])


LABEL_GAP = 6  # pixels between a row label and the picture's edges
LABEL_SIZE = 11  # font size of the labels at scale 1


def labelled_grid(rows: list[np.ndarray], labels: list[str], scale: int = 1, padding: int = 2) -> np.ndarray:
    """:func:`image_grid` enlarged ``scale`` times with a text label (PIL's default font) left of each row."""
    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows need as many labels, got {len(labels)}")
    grid = enlarged(Image.fromarray(image_grid(rows, padding)), scale)
    font = ImageFont.load_default(size=LABEL_SIZE * scale)
    boxes = [ImageDraw.Draw(grid).textbbox((0, 0), label, font=font) for label in labels]
    canvas = Image.new("RGB", (grid.width + max(box[2] for box in boxes) + 2 * LABEL_GAP, grid.height), "white")
    canvas.paste(grid, (canvas.width - grid.width, 0))
    draw = ImageDraw.Draw(canvas)
    height = rows[0].shape[1]
    for i, (label, box) in enumerate(zip(labels, boxes)):
        centre = (padding + i * (height + padding) + height / 2) * scale
        draw.text((LABEL_GAP, centre - (box[1] + box[3]) / 2), label, fill="black", font=font)
    return np.asarray(canvas)


def captioned_pictures(pictures: list[np.ndarray], captions: list[str], gap: int = 12) -> np.ndarray:
    """uint8 [H, W, 3] pictures side by side, ``gap`` pixels apart, each under its caption (PIL's default font)."""
    if len(captions) != len(pictures) or not pictures:
        raise ValueError(f"{len(pictures)} pictures need as many captions, got {len(captions)}")
    font = ImageFont.load_default(size=LABEL_SIZE)
    line = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), c, font=font)[3] for c in captions)
    top = line + LABEL_GAP
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) + 1)
    canvas = Image.new("RGB", (width, top + max(p.shape[0] for p in pictures) + gap), "white")
    draw, left = ImageDraw.Draw(canvas), gap
    for picture, caption in zip(pictures, captions):
        draw.text((left, LABEL_GAP // 2), caption, fill="black", font=font)
        canvas.paste(Image.fromarray(picture), (left, top))
        left += picture.shape[1] + gap
    return np.asarray(canvas)


def enlarged(picture: Image.Image, scale: int) -> Image.Image:
    """``picture`` enlarged ``scale`` times with nearest-neighbour pixels (unchanged for scale 1)."""
    if scale <= 1:
        return picture
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """A uint8 [H, W, 3] picture as PNG bytes, enlarged ``scale`` times."""
    buffer = io.BytesIO()
    enlarged(Image.fromarray(image), scale).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: np.ndarray, path: str, scale: int = 1) -> None:
    """Write a uint8 [H, W, 3] picture as PNG (a path or URI, atomically), enlarged ``scale`` times."""
    storage.write_bytes(str(path), png_bytes(image, scale))


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes (to write through ``dctdiff.infra.storage``); closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
