"""Real input files for the prepare tests, written by the tests: image folders of mixed formats and
modes with bad files among them, and CIFAR-10 binary batches; each with the expected content."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from dctdiff.data.bundled_photos import photo_crops

# Expected rejection kind of each bad file write_image_folder makes.
BAD_FILES = {
    "cats/empty.png": "empty",
    "cats/truncated.png": "corrupt",
    "dogs/truncated.jpg": "corrupt",
    "dogs/notes.txt": "not an image",
    "dogs/random.jpg": "not an image",
    "cats/tiny.png": "too small",
    "dogs/bomb.png": "decompression bomb",
}
BOMB_SIDE = 3000  # the bomb is BOMB_SIDE^2 pixels; tests run with max_pixels below that


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Reference alpha compositing in floating point: c a + 255 (1 - a), a in [0, 1]."""
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def write_image_folder(root: Path, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Two class folders (cats, dogs) of good images in many formats and modes, plus BAD_FILES.

    Returns id (relative path) -> the RGB uint8 image a correct decoder must produce (before resizing),
    computed from the source arrays with plain NumPy wherever the format is lossless.
    """
    rng = np.random.default_rng(seed)
    photos = photo_crops(12, 2 * size, seed=seed)  # [12, 2S, 2S, 3] natural content
    expected: dict[str, np.ndarray] = {}

    def put(name: str, data: bytes, pixels: np.ndarray | None = None) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if pixels is None:  # lossy: what Pillow decodes is the content
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        expected[name] = pixels

    rgb = photos[0]
    put("cats/rgb.png", encode(Image.fromarray(rgb), "PNG"), rgb)
    grey = photos[1].mean(axis=-1).astype(np.uint8)
    put("cats/grey.png", encode(Image.fromarray(grey), "PNG"), np.repeat(grey[..., None], 3, -1))
    rgba = np.concatenate([photos[2], rng.integers(0, 256, (2 * size, 2 * size, 1), dtype=np.uint8)], -1)
    put("cats/alpha.png", encode(Image.fromarray(rgba), "PNG"), composite_on_white(rgba))
    la = np.stack([grey, rng.integers(0, 256, grey.shape, dtype=np.uint8)], -1)
    put("cats/grey_alpha.png", encode(Image.fromarray(la), "PNG"), composite_on_white(la[..., [0, 0, 0, 1]]))
    sixteen = (photos[3][..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, grey.shape)).astype(np.uint16)
    scaled = np.round(sixteen * 255.0 / 65535.0).astype(np.uint8)
    put("cats/grey16.png", encode(Image.fromarray(sixteen), "PNG"), np.repeat(scaled[..., None], 3, -1))
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (2 * size, 3 * size), dtype=np.uint8)
    paletted = Image.fromarray(indices).convert("P")
    paletted.putpalette(palette.ravel().tolist())
    with_white = palette[indices].copy()
    with_white[indices == 0] = 255
    put("cats/palette_transparent.png", encode(paletted, "PNG", transparency=0), with_white)
    put("cats/palette.gif", encode(paletted, "GIF"), palette[indices])
    bits = rng.integers(0, 2, (3 * size, 2 * size), dtype=np.uint8).astype(bool)
    white = np.repeat((bits * 255).astype(np.uint8)[..., None], 3, -1)
    put("cats/bilevel.png", encode(Image.fromarray(bits), "PNG"), white)
    put("cats/deep/nested.webp", encode(Image.fromarray(rgba), "WEBP", lossless=True), composite_on_white(rgba))

    put("dogs/photo.jpg", encode(Image.fromarray(photos[4]), "JPEG", quality=90))
    put("dogs/large.jpg", encode(Image.fromarray(np.concatenate([photos[5], photos[6]], 1)), "JPEG", quality=95))
    put("dogs/cmyk.jpg", encode(Image.fromarray(photos[7]).convert("CMYK"), "JPEG", quality=95))
    put("dogs/lossy.webp", encode(Image.fromarray(photos[8]), "WEBP", quality=80))
    tall = np.concatenate([photos[9], photos[10]], 0)[:, : 2 * size - 4]  # [4S, 2S - 4, 3]
    put("dogs/odd_size.bmp", encode(Image.fromarray(tall), "BMP"), tall)
    # EXIF orientation 6: the stored pixels are shown rotated 90 degrees clockwise.
    stored = np.ascontiguousarray(photos[11][:, : 3 * size // 2])
    exif = Image.Exif()
    exif[0x0112] = 6
    shown = np.ascontiguousarray(np.rot90(stored, k=-1))
    put("dogs/rotated.png", encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()), shown)

    png = encode(Image.fromarray(photos[0]), "PNG")
    jpeg = encode(Image.fromarray(photos[1]), "JPEG")
    bad = {
        "cats/empty.png": b"",
        "cats/truncated.png": png[: len(png) // 2],
        "dogs/truncated.jpg": jpeg[: len(jpeg) // 2],
        "dogs/notes.txt": b"not an image, just notes\n",
        "dogs/random.jpg": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "cats/tiny.png": encode(Image.fromarray(photos[0][: size // 2, : size // 2]), "PNG"),
        "dogs/bomb.png": encode(Image.new("L", (BOMB_SIDE, BOMB_SIDE)), "PNG"),
    }
    assert set(bad) == set(BAD_FILES)
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return expected


def cifar10_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """n random CIFAR-10 records: (images uint8 [n, 32, 32, 3], labels [n], the binary batch bytes)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
    return images, labels, records.astype(np.uint8).tobytes()


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(path: Path, per_batch: int, archive: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny CIFAR-10 binary version: five train batches and a test batch of ``per_batch`` records,
    as ``path`` = cifar-10-binary.tar.gz (archive) or a folder with cifar-10-batches-bin/ inside.
    Returns batch name -> (images, labels)."""
    batches = {f"data_batch_{i}": cifar10_records(per_batch, i) for i in range(1, 6)}
    batches["test_batch"] = cifar10_records(per_batch, 6)
    files = {f"cifar-10-batches-bin/{name}.bin": data for name, (_, _, data) in batches.items()}
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    files["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    if archive:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    return {name: (images, labels) for name, (images, labels, _) in batches.items()}
