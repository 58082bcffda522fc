"""One image in: decode, validate, convert to RGB uint8, centre-crop and resize to the resolution.

Every way an input can be unusable raises :class:`ImageRejected` with a short ``kind`` and a
detail, so the prepare job records it and moves on instead of crashing.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own decompression-bomb threshold (it errors at twice this); our default limit.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow refuses to open larger images whatever --max-pixels says (None: Pillow's check is off).
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageRejected(Exception):
    """An input that cannot become a training image; ``kind`` groups the reasons in report.json."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# What a source reads for one image: encoded bytes, uint8 pixels [H, W, 3] / grey [H, W], or a rejection.
Payload = Union[bytes, np.ndarray, ImageRejected]


@dataclass(frozen=True)
class FitSpec:
    """How every image is brought to the training resolution.

    Args:
        resolution: output side R (square R x R).
        upscale: enlarge images whose short side is below R instead of rejecting them.
        max_pixels: width * height above which an encoded image is rejected as a decompression bomb.
        crop_box: optional fixed (top, left, height, width) crop applied first (e.g. CelebA's face box).
    """

    resolution: int
    upscale: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    crop_box: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if PILLOW_MAX_PIXELS and self.max_pixels > PILLOW_MAX_PIXELS:
            raise ValueError(
                f"--max-pixels must be at most {PILLOW_MAX_PIXELS} (Pillow opens no larger image), got {self.max_pixels}"
            )
        box = self.crop_box
        if box is not None and (len(box) != 4 or min(box[2:]) < 1 or min(box[:2]) < 0):
            raise ValueError(f"crop_box must be (top >= 0, left >= 0, height >= 1, width >= 1), got {self.crop_box}")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Encoded bytes (PNG, JPEG, WebP, GIF, BMP, TIFF...) -> an RGB PIL image, EXIF orientation applied.

    Palette, grey and 16-bit images become RGB; transparency is composited on white. Raises
    ImageRejected for empty, non-image, corrupt or truncated data, oversized images and pixel modes
    that carry no displayable colour (floating point).
    """
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image", "unrecognised image format") from None
    except Image.DecompressionBombError as error:  # over twice Pillow's limit: its message has the pixel count
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise too_many_pixels(found.group(1) if found else f"over {PILLOW_MAX_PIXELS}", max_pixels) from None
    except Exception as error:  # Pillow's plugins raise many types for malformed headers
        raise ImageRejected("corrupt", f"{type(error).__name__}: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise too_many_pixels(f"{width}x{height} = {width * height}", max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageRejected:
        raise
    except Exception as error:  # truncated streams, bad checksums, broken chunks ...
        raise ImageRejected("corrupt", f"{type(error).__name__}: {error}") from None


def too_many_pixels(pixels: str, max_pixels: int) -> ImageRejected:
    """The rejection of an image over the ``--max-pixels`` rule (a decompression bomb, or a genuine huge image)."""
    return ImageRejected(
        "decompression bomb",
        f"{pixels} pixels exceeds --max-pixels {max_pixels} (raise it with --max-pixels N for genuine large images)",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> mode RGB. Grey repeats into R=G=B; 16-bit grey scales by 255/65535;
    alpha (or a transparent palette entry) is composited on white: out = (c a + 255 (255 - a)) / 255."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    if image.mode == "F":
        raise ImageRejected("unsupported", "floating-point pixels (mode F) have no defined 0..255 range")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return image.convert("RGB")


def fit(image: Image.Image, spec: FitSpec) -> np.ndarray:
    """An RGB image -> uint8 [R, R, 3]: optional fixed crop box, then centre crop and antialiased resize.

    The resize is guided-diffusion's ``center_crop_arr`` (the ImageNet-64 / U-ViT convention): halve
    with a box filter while the short side is >= 2R, bicubic to short side R, centre crop.
    Raises ImageRejected when the image is smaller than R (unless ``spec.upscale``) or the crop box.
    """
    if spec.crop_box is not None:
        top, left, height, width = spec.crop_box
        if image.height < top + height or image.width < left + width:
            raise ImageRejected(
                "too small", f"{image.width}x{image.height} does not contain the crop box {spec.crop_box}"
            )
        image = image.crop((left, top, left + width, top + height))
    size = spec.resolution
    if min(image.size) < size and not spec.upscale:
        raise ImageRejected(
            "too small", f"{image.width}x{image.height} is smaller than {size}x{size} (pass --upscale to enlarge)"
        )
    if image.size != (size, size):
        while min(image.size) >= 2 * size:
            image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
        scale = size / min(image.size)
        image = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
            resample=Image.Resampling.BICUBIC,
        )
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def prepare_encoded(data: bytes, spec: FitSpec) -> np.ndarray:
    """Encoded image bytes -> uint8 [R, R, 3] (decode + fit); raises ImageRejected."""
    return fit(decode(data, spec.max_pixels), spec)


def prepare_array(pixels: np.ndarray, spec: FitSpec) -> np.ndarray:
    """A decoded uint8 image [H, W, 3] (or grey [H, W]) -> uint8 [R, R, 3]; raises ImageRejected."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.shape[:2] == (spec.resolution, spec.resolution) and spec.crop_box is None:
        return pixels
    return fit(Image.fromarray(pixels), spec)


def decode_payload(payload: Payload, spec: FitSpec | None) -> np.ndarray:
    """What a source read for one image -> uint8 RGB [H, W, 3], fitted to ``spec`` when given (else at
    its own size): bytes are decoded, pixels taken as they are (grey repeated to R = G = B), and a
    rejection is raised. The one decoding of source payloads (prepare and evaluation image sets);
    raises ImageRejected."""
    if isinstance(payload, ImageRejected):
        raise payload
    if isinstance(payload, bytes):
        return prepare_encoded(payload, spec) if spec else np.asarray(decode(payload), dtype=np.uint8)
    if spec:
        return prepare_array(payload, spec)
    return np.repeat(payload[..., None], 3, axis=-1) if payload.ndim == 2 else payload
