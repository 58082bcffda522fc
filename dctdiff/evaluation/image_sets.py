"""Image sets for evaluation: what `dctdiff evaluate` and `dctdiff upsample` accept.

A set is named by a string:
- a folder of image files (found recursively; a local path or any URI pyarrow understands),
- a `dctdiff prepare` output folder (it has ``coefficients/``): its images decoded from the
  stored DCT coefficients with every frequency kept (only the 4:2:0 chroma subsampling remains),
- an ``.npz`` of uint8 images [N, H, W, 3] (key ``images``, ``arr_0``, or its only array),
- an ``.npz`` of FID statistics with ``mu`` and ``sigma`` (pytorch-fid's format): opened as ``FIDStats``,
- ``photos[:N]``: N crops of the bundled photos (``dctdiff.data.bundled_photos``, default 64) at a given resolution,
- a prepare source whose class accepts the evaluate job (``dctdiff.data.sources.SOURCES``, e.g.
  ``cifar10:PATH``): its training split, read with prepare's readers (so reference statistics come from
  the original pixels).

All images of a set have one size. A set is read in-process in batches or becomes a Ray dataset with an
``image`` column. Bad input raises ``ImageSetError`` (a ValueError) whose message names the file.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from dctdiff.core.codec import DCTCodec
from dctdiff.data import shards
from dctdiff.data.image_decoding import FitSpec, ImageRejected, decode_payload
from dctdiff.data.sources import EVALUATE, IMAGE_EXTENSIONS, ImageSource, Item, open_source, source_class
from dctdiff.evaluation.fid import FIDStats, stats_from_npz
from dctdiff.infra import storage
from dctdiff.infra.logs import show_progress

IMAGE_NPZ_KEYS = ("images", "arr_0")
PHOTOS = "photos"
DEFAULT_PHOTO_COUNT = 64
HEADER_THREADS = 16
FILES_PER_RAY_BATCH = 32
SOURCE_ITEMS_PER_TASK = 256
IMAGE_SET_FORMS = "an image folder, a prepare output, an .npz of images or statistics, SOURCE:PATH or photos:N"


class ImageSetError(ValueError):
    """An image set that cannot be used as given: empty, mixed sizes, a corrupt file, bad statistics..."""


def read_image(uri: str, fit_spec: FitSpec | None = None) -> np.ndarray:
    """The image file at ``uri`` as uint8 RGB [H, W, 3] with prepare's decoder (EXIF orientation, alpha on
    white, 16-bit grey...: ``decode_payload``), fitted to ``fit_spec`` when given."""
    try:
        return decode_payload(storage.read_bytes(uri), fit_spec)
    except ImageRejected as error:
        raise ImageSetError(f"cannot use image {uri}: {error}") from None


def relative_image_paths(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, sorted, hidden ones skipped), relative to it ('/'-separated)."""
    return [e.relative for e in storage.list_files(folder) if e.relative.lower().endswith(IMAGE_EXTENSIONS)]


def list_image_files(folder: str, limit: int | None = None) -> list[str]:
    """The first ``limit`` (default all) image files under ``folder`` as paths/URIs."""
    return [storage.join(folder, relative) for relative in relative_image_paths(folder)[:limit]]


def _header_size(uri: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with storage.open_input(uri) as handle, Image.open(handle) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise ImageSetError(f"cannot read image {uri}: not an image file (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageSetError(f"cannot read image {uri}: {type(error).__name__}: {error}") from None
    return height, width


def image_sizes(files: Sequence[str], progress: bool = False) -> list[tuple[int, int]]:
    """(height, width) of each image file from its header (threads: cheap on object stores too)."""
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        bar = tqdm(
            pool.map(_header_size, files), total=len(files), desc="image headers", disable=not show_progress(progress)
        )
        return list(bar)


def error_message(error: BaseException) -> str:
    """A short message for ``error``: the ``ImageSetError`` text inside a Ray task failure (Ray Data
    re-raises errors of user code as a UserCodeException that carries only their text), else str(error)."""
    found = re.findall(rf"{ImageSetError.__name__}: (.+)", str(error))
    return found[-1] if found else str(error)


class ImageSet(ABC):
    """A validated set of ``count`` uint8 RGB images of one ``size`` (height, width) at ``location``."""

    location: str
    count: int
    size: tuple[int, int]

    @abstractmethod
    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """In-process: uint8 batches [b, H, W, 3], always in the same order."""

    @abstractmethod
    def to_dataset(self) -> Any:
        """A Ray dataset with one row per image, column ``image`` [H, W, 3] uint8."""

    def load(self) -> np.ndarray:
        """All images in memory, uint8 [N, H, W, 3]."""
        return np.concatenate(list(self.iter_batches(256)))

    def describe(self) -> str:
        return f"{self.location} ({self.count} images, {self.size[0]}x{self.size[1]})"


class ArrayImages(ImageSet):
    """Images held in memory (an ``.npz`` or the bundled photo crops)."""

    def __init__(self, location: str, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ImageSetError(
                f"{location}: images must be uint8 [N, H, W, 3] (RGB, channels last), "
                f"got {images.dtype} {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ImageSetError(f"{location} holds no images")
        self.location, self.images = location, images
        self.count, self.size = images.shape[0], (images.shape[1], images.shape[2])

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.count, batch_size):
            yield self.images[start : start + batch_size]

    def load(self) -> np.ndarray:
        return self.images

    def to_dataset(self) -> Any:
        import ray.data

        return ray.data.from_numpy(self.images).rename_columns({"data": "image"})


def _checked_size(image: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    if image.shape[:2] != size:
        raise ImageSetError(f"{name} is {image.shape[0]}x{image.shape[1]}, the set's images are {size[0]}x{size[1]}")
    return image


def _decode_files(
    batch: dict[str, np.ndarray], size: tuple[int, int], fit_spec: FitSpec | None
) -> dict[str, np.ndarray]:
    """Batch {path [b]} -> {image [b, H, W, 3]}; every image must come out ``size``."""
    return {"image": np.stack([_checked_size(read_image(p, fit_spec), size, p) for p in map(str, batch["path"])])}


class FolderImages(ImageSet):
    """Image files under a folder, in sorted order.

    Without ``fit_spec`` all files must have one size, checked from their headers up front; with it,
    each image is centre-cropped and resized to ``fit_spec.resolution`` as `dctdiff prepare` does.
    """

    def __init__(
        self, location: str, files: Sequence[str], fit_spec: FitSpec | None = None, progress: bool = False
    ) -> None:
        if not files:
            raise ImageSetError(f"{location} holds no image files (looked for {' '.join(IMAGE_EXTENSIONS)})")
        sizes = image_sizes(files, progress)
        if fit_spec is None:
            for path, size in zip(files, sizes):
                if size != sizes[0]:
                    raise ImageSetError(
                        f"{location} mixes image sizes: {files[0]} is {sizes[0][0]}x{sizes[0][1]} but {path} is "
                        f"{size[0]}x{size[1]}; an image set needs one size (give a resolution to centre-crop and "
                        "resize them, or prepare them with `dctdiff prepare`"
                    )
        self.location, self.files, self.fit_spec = location, list(files), fit_spec
        self.count = len(self.files)
        self.size = (fit_spec.resolution, fit_spec.resolution) if fit_spec else sizes[0]

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.count, batch_size):
            paths = np.array(self.files[start : start + batch_size])
            yield _decode_files({"path": paths}, self.size, self.fit_spec)["image"]

    def to_dataset(self) -> Any:
        import ray.data

        return ray.data.from_items([{"path": p} for p in self.files]).map_batches(
            _decode_files,
            fn_kwargs={"size": self.size, "fit_spec": self.fit_spec},
            batch_size=FILES_PER_RAY_BATCH,
            batch_format="numpy",
        )


@lru_cache(maxsize=8)
def _full_codec(resolution: int, block_size: int, colour: str) -> DCTCodec:
    return DCTCodec(resolution, block_size, keep=block_size**2, colour=colour)


def _decode_shard(uri: str, rows: int, params: shards.CodecParams) -> np.ndarray:
    """The first ``rows`` images of a shard -> uint8 [n, R, R, 3]: its stored pixels (grey replicated to
    R = G = B) where prepare kept them, else its coefficients [n, L, blocks, B*B] decoded in the shards' mode."""
    if params.pixels:
        pixels = shards.read_pixels(uri)[:rows]  # [n, R, R, C]
        return np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:3], 3)))
    _, _, coefficients = shards.read_shard(uri)
    codec = _full_codec(params.resolution, params.block_size, params.colour)
    tokens = codec.tokens_from_coefficients(np.asarray(coefficients[:rows], dtype=np.float32))
    return codec.decode(tokens).numpy()


def _decode_shard_batch(batch: dict[str, np.ndarray], params: shards.CodecParams) -> dict[str, np.ndarray]:
    """Batch {shard, rows} -> {image}: every image of those shards."""
    images = [_decode_shard(str(uri), int(rows), params) for uri, rows in zip(batch["shard"], batch["rows"])]
    return {"image": np.concatenate(images)}


class PreparedImages(ImageSet):
    """The images of a prepare output: the stored source pixels (``--store-pixels``), else decoded from
    their coefficients with all B*B frequencies in the shards' colour mode."""

    def __init__(self, location: str, limit: int | None = None) -> None:
        import pyarrow.parquet as pq

        files = shards.shard_files(location)
        if not files:
            folder = storage.join(location, shards.COEFFICIENT_DIR)
            raise ImageSetError(f"{folder} holds no Parquet shards (run `dctdiff prepare`")
        try:
            self.params = shards.read_codec_params(files[0])
        except ValueError as error:
            raise ImageSetError(str(error)) from None
        self.shards: list[tuple[str, int]] = []  # (uri, rows used)
        remaining = limit if limit is not None else float("inf")
        for uri in files:
            if remaining <= 0:
                break
            self.params.check_matches(shards.read_codec_params(uri), uri)
            fs, path = storage.resolve(uri)
            rows = int(min(pq.ParquetFile(path, filesystem=fs).metadata.num_rows, remaining))
            self.shards.append((uri, rows))
            remaining -= rows
        self.location = location
        self.count = sum(rows for _, rows in self.shards)
        if self.count == 0:
            raise ImageSetError(f"{location} holds no images (its shards are empty)")
        self.size = (self.params.resolution, self.params.resolution)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for uri, rows in self.shards:
            images = _decode_shard(uri, rows, self.params)
            for start in range(0, rows, batch_size):
                yield images[start : start + batch_size]

    def to_dataset(self) -> Any:
        import ray.data

        items = [{"shard": uri, "rows": rows} for uri, rows in self.shards]
        return ray.data.from_items(items).map_batches(
            _decode_shard_batch, fn_kwargs={"params": self.params}, batch_size=1, batch_format="numpy"
        )


def _fit_spec(resolution: int | None) -> FitSpec | None:
    """Centre crop and resize (up or down, as prepare does with --upscale) to ``resolution``."""
    return None if resolution is None else FitSpec(resolution, upscale=True)


def _load_items(source: ImageSource, items: Sequence[Item], fit_spec: FitSpec | None) -> list[np.ndarray]:
    """Read source items as uint8 RGB [H, W, 3] (fitted to ``fit_spec`` when given)."""
    images = []
    for loaded in source.load(list(items)):
        try:
            images.append(decode_payload(loaded.payload, fit_spec))
        except ImageRejected as error:
            raise ImageSetError(f"cannot use {source.spec} item {loaded.id}: {error}") from None
    return images


def _load_source_range(
    batch: dict[str, np.ndarray],
    source: ImageSource,
    items: Sequence[Item],
    size: tuple[int, int],
    fit_spec: FitSpec | None,
) -> dict[str, np.ndarray]:
    """Ray Data step: {start, stop} item ranges -> {image [b, H, W, 3]}."""
    images = []
    for start, stop in zip(batch["start"], batch["stop"]):
        chunk = items[int(start) : int(stop)]
        for item, image in zip(chunk, _load_items(source, chunk, fit_spec)):
            images.append(_checked_size(image, size, f"{source.spec} item {item.id}"))
    return {"image": np.stack(images)}


class SourceImages(ImageSet):
    """Images of a prepare source that accepts the evaluate job (train split), read with prepare's
    readers, so reference statistics come from the original pixels."""

    def __init__(self, spec: str, resolution: int | None, limit: int | None) -> None:
        try:
            self.source = open_source(spec, resolution=resolution or 1, job=EVALUATE)
        except ValueError as error:
            raise ImageSetError(str(error)) from None
        self.items = self.source.items()[:limit]
        if not self.items:
            raise ImageSetError(f"{spec} holds no images")
        self.fit_spec = _fit_spec(resolution)
        first = _load_items(self.source, self.items[:1], self.fit_spec)[0]
        self.location, self.count, self.size = spec, len(self.items), first.shape[:2]

    def _ranges(self, step: int) -> list[tuple[int, int]]:
        return [(start, min(start + step, self.count)) for start in range(0, self.count, step)]

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start, stop in self._ranges(batch_size):
            ranges = {"start": np.array([start]), "stop": np.array([stop])}
            yield _load_source_range(ranges, self.source, self.items, self.size, self.fit_spec)["image"]

    def to_dataset(self) -> Any:
        import ray.data

        ranges = [{"start": start, "stop": stop} for start, stop in self._ranges(SOURCE_ITEMS_PER_TASK)]
        return ray.data.from_items(ranges).map_batches(
            _load_source_range,
            fn_kwargs={"source": self.source, "items": self.items, "size": self.size, "fit_spec": self.fit_spec},
            batch_size=1,
            batch_format="numpy",
        )


def _npz(path: str, limit: int | None) -> ArrayImages | FIDStats:
    """An ``.npz`` of images or of FID statistics."""
    try:
        data = np.load(io.BytesIO(storage.read_bytes(path)))
    except (OSError, ValueError) as error:
        raise ImageSetError(f"cannot read {path} as an .npz file: {error}") from None
    with data:
        keys = list(data.files)
        if {"mu", "sigma"} <= set(keys):
            try:
                return stats_from_npz(data, path)
            except ValueError as error:
                raise ImageSetError(str(error)) from None
        names = [k for k in IMAGE_NPZ_KEYS if k in keys] or (keys if len(keys) == 1 else [])
        if not names:
            raise ImageSetError(
                f"{path} has keys {keys}: expected FID statistics (mu, sigma) or uint8 images [N, H, W, 3] "
                f"under one of {list(IMAGE_NPZ_KEYS)}"
            )
        return ArrayImages(path, data[names[0]][:limit])


def _photos(spec: str, resolution: int | None, limit: int | None) -> ArrayImages:
    from dctdiff.data.bundled_photos import photo_crops

    count = spec.partition(":")[2]
    if count and not count.isdigit():
        raise ImageSetError(f"bad image set {spec!r}: write photos or photos:N, N the number of crops")
    if resolution is None:
        raise ImageSetError(f"{spec} needs a resolution (the crop size), e.g. --resolution 64")
    n = int(count) if count else DEFAULT_PHOTO_COUNT
    return ArrayImages(spec, photo_crops(n if limit is None else min(n, limit), resolution, seed=0))


def open_image_set(
    spec: str, resolution: int | None = None, limit: int | None = None, progress: bool = False
) -> ImageSet | FIDStats:
    """Open an image set (see the module docstring), or the FID statistics an ``.npz`` holds.

    ``resolution``: the crop size of ``photos``; image folders and prepare sources are centre-cropped
    and resized (up or down) to it as prepare does; ``.npz`` and prepare outputs must already have that
    size. ``limit``: only the first images.
    """
    if limit is not None and limit < 1:
        raise ImageSetError(f"limit must be >= 1, got {limit}")
    if spec == PHOTOS or spec.startswith(PHOTOS + ":"):
        return _photos(spec, resolution, limit)
    if source_class(spec, EVALUATE) is not None:
        return SourceImages(spec, resolution, limit)
    try:
        storage.require_exists(spec, "image set", f"give {IMAGE_SET_FORMS}")
    except storage.MissingPathError as error:
        raise ImageSetError(str(error)) from None
    if spec.endswith(".npz"):
        image_set = _npz(spec, limit)
    elif storage.is_dir(spec) and storage.is_dir(storage.join(spec, shards.COEFFICIENT_DIR)):
        image_set = PreparedImages(spec, limit)
    elif storage.is_dir(spec):
        return FolderImages(spec, list_image_files(spec, limit), _fit_spec(resolution), progress)
    else:
        raise ImageSetError(f"{spec} is not {IMAGE_SET_FORMS}")
    if isinstance(image_set, ImageSet) and resolution is not None and image_set.size != (resolution, resolution):
        raise ImageSetError(
            f"{image_set.describe()} is not at resolution {resolution}; prepare it at that resolution "
            "(`dctdiff prepare`) or leave the resolution out"
        )
    return image_set
