"""The offline demo image set: deterministic crops of the colour photos that scikit-image and
scikit-learn ship inside their packages (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# skimage.data photos stored inside the scikit-image wheel (others need a download and are left out).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
)


@lru_cache(maxsize=1)
def bundled_photos() -> tuple[np.ndarray, ...]:
    """All bundled colour photos as uint8 RGB arrays [H, W, 3] (skimage.data + sklearn sample images)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    photos.extend(load_sample_images().images)
    return tuple(np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos)


def photo_crops(n: int, size: int, seed: int = 0, min_fraction: float = 0.25) -> np.ndarray:
    """``n`` square crops of the bundled photos, resized (antialiased) to ``size`` x ``size``.

    Crop i depends only on (seed, i): the photo, the crop side (a random fraction in
    [min_fraction, 1] of the photo's short side) and its position are drawn from
    ``np.random.default_rng([seed, i])``. Returns uint8 [n, size, size, 3].
    """
    if n < 0 or size < 1:
        raise ValueError(f"need n >= 0 and size >= 1, got n={n}, size={size}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    photos = bundled_photos()
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        side = max(size, int(min(height, width) * rng.uniform(min_fraction, 1.0)))
        top = rng.integers(height - side + 1)
        left = rng.integers(width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crops[i] = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
    return crops
