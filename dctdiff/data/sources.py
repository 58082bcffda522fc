"""Image sources for pipelines/prepare.py.

A source is listed once on the driver (:meth:`ImageSource.items`: a sorted list of small work items
with stable ids) and read in pieces on the workers (:meth:`ImageSource.load`: pixels or encoded
bytes per item, or the reason the item cannot be read). Sources:

- ``folder:PATH``       image files found recursively; class subfolders give labels
- ``cifar10:PATH``      CIFAR-10 binary version (cifar-10-binary.tar.gz or its extracted folder)
- ``fashion-mnist[:PATH]`` IDX files (default: the Debian package's folder), padded to 32 x 32
- ``photos``            deterministic crops of the photos bundled with scikit-image / scikit-learn
- ``parquet:PATH``      Hugging Face datasets layout: ``image`` struct with ``bytes``, optional ``label``

PATH may be a local path or any URI pyarrow understands (dctdiff.infra.storage).
"""

from __future__ import annotations

import gzip
import json
import posixpath
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Iterator, Union

import numpy as np
import pyarrow.parquet as pq

from dctdiff.infra import storage
from dctdiff.data.image_decoding import ImageRejected

SOURCE_FORMS = "folder:PATH, cifar10:PATH, fashion-mnist[:PATH], photos or parquet:PATH"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)
CIFAR10_RECORD = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes row-major
CIFAR10_SPLITS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
DEFAULT_PHOTOS = 1000

Payload = Union[bytes, np.ndarray, ImageRejected]


@dataclass(frozen=True)
class Item:
    """One image to read: a stable ``id`` and a source-specific, JSON-able locator ``ref``."""

    id: str
    ref: Any


@dataclass(frozen=True)
class Loaded:
    """What a worker got for one item: encoded bytes, uint8 pixels [H, W, 3] / [H, W], or a rejection."""

    id: str
    label: int
    payload: Payload


class ImageSource(ABC):
    """Lists work items on the driver and reads them on the workers (must pickle cheaply)."""

    spec: str

    @abstractmethod
    def items(self) -> list[Item]:
        """All items, in a fixed order (the order of the output rows)."""

    @abstractmethod
    def load(self, items: list[Item]) -> Iterator[Loaded]:
        """Read ``items`` (a contiguous run of :meth:`items`), one Loaded per item, in order."""

    def class_names(self) -> list[str] | None:
        """Names of labels 0..K-1 (written to labels.json), or None for unlabeled data."""
        return None


def _unreadable(error: Exception) -> ImageRejected:
    return ImageRejected("unreadable", f"{type(error).__name__}: {error}")


class FolderSource(ImageSource):
    """Every non-hidden file under ``root`` (recursive, sorted by path; the id is the relative path).

    Labels: when no image file sits directly in ``root``, the sorted first-level subfolder names are
    the classes (ImageNet's train/<wnid>/ layout); ``unlabeled`` turns this off (e.g. FFHQ's
    numbered chunk folders). Files that do not decode are rejected by the job, not skipped.
    """

    def __init__(self, root: str, unlabeled: bool = False) -> None:
        if not storage.is_dir(root):
            raise ValueError(f"source folder {root} does not exist (folder:PATH needs a folder of images)")
        self.root = storage.normalize(root)
        self.spec = f"folder:{self.root}"
        self.unlabeled = unlabeled
        self._listing: tuple[list[str], list[str] | None] | None = None

    def _list(self) -> tuple[list[str], list[str] | None]:
        """(files, class names or None), listed once: the driver asks for both."""
        if self._listing is None:
            files = [entry.relative for entry in storage.list_files(self.root)]
            top_level_images = any("/" not in f and f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
            folders = sorted({f.split("/", 1)[0] for f in files if "/" in f})
            self._listing = files, None if self.unlabeled or top_level_images or not folders else folders
        return self._listing

    def items(self) -> list[Item]:
        files, classes = self._list()
        index = {name: i for i, name in enumerate(classes or [])}
        return [Item(f, index.get(f.split("/", 1)[0], -1) if "/" in f else -1) for f in files]

    def class_names(self) -> list[str] | None:
        return self._list()[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_listing": None}  # workers get their items with each task

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        contents = storage.read_many(self.root, (item.id for item in items))
        for item, data in zip(items, contents):
            yield Loaded(item.id, int(item.ref), _unreadable(data) if isinstance(data, OSError) else data)


class Cifar10Source(ImageSource):
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes, 32 x 32).

    ``path`` is ``cifar-10-binary.tar.gz`` or a folder holding the ``.bin`` files (directly or in
    ``cifar-10-batches-bin/``). Ids: ``data_batch_1/00042``, ``test_batch/00007``.
    """

    def __init__(self, path: str, split: str) -> None:
        if split not in CIFAR10_SPLITS:
            raise ValueError(f"--split must be train or test for cifar10, got {split!r}")
        if not storage.exists(path):
            raise ValueError(f"cifar10 source {path} does not exist (give cifar-10-binary.tar.gz or its folder)")
        self.path = storage.normalize(path)
        self.split = split
        self.spec = f"cifar10:{self.path}"
        self.archive = not storage.is_dir(self.path)
        self._members, self._classes = self._inventory()

    def _folder(self) -> str:
        nested = storage.join(self.path, "cifar-10-batches-bin")
        return nested if storage.is_dir(nested) else self.path

    def _inventory(self) -> tuple[dict[str, int], list[str] | None]:
        """Member name -> record count for this split, and the class names (batches.meta.txt)."""
        sizes: dict[str, int] = {}
        classes = None
        if self.archive:
            try:
                with storage.open_input(self.path) as handle, tarfile.open(fileobj=handle, mode="r|gz") as tar:
                    for member in tar:
                        name = posixpath.basename(member.name)
                        if name in CIFAR10_SPLITS[self.split]:
                            sizes[name] = member.size
                        elif name == "batches.meta.txt":
                            classes = tar.extractfile(member).read().decode().split()
            except (tarfile.TarError, OSError, EOFError) as error:
                raise ValueError(f"{self.path} is not a readable tar.gz archive: {error}") from error
        else:
            folder = self._folder()
            for name in CIFAR10_SPLITS[self.split]:
                if storage.exists(storage.join(folder, name)):
                    sizes[name] = storage.file_size(storage.join(folder, name))
            meta = storage.join(folder, "batches.meta.txt")
            classes = storage.read_bytes(meta).decode().split() if storage.exists(meta) else None
        if not sizes:
            raise ValueError(
                f"no CIFAR-10 {self.split} batches ({', '.join(CIFAR10_SPLITS[self.split])}) in {self.path}: "
                "give the binary version (cifar-10-binary.tar.gz), not the Python pickles"
            )
        for name, size in sizes.items():
            if size % CIFAR10_RECORD:
                raise ValueError(f"{name} in {self.path} is {size} bytes, not a multiple of {CIFAR10_RECORD}")
        ordered = {name: sizes[name] // CIFAR10_RECORD for name in CIFAR10_SPLITS[self.split] if name in sizes}
        return ordered, classes

    def items(self) -> list[Item]:
        return [
            Item(f"{name.removesuffix('.bin')}/{i:05d}", [name, i])
            for name, count in self._members.items()
            for i in range(count)
        ]

    def class_names(self) -> list[str] | None:
        return self._classes

    def _read_records(self, member: str, first: int, count: int) -> bytes:
        start, length = first * CIFAR10_RECORD, count * CIFAR10_RECORD
        if not self.archive:
            with storage.open_input(storage.join(self._folder(), member)) as handle:
                handle.seek(start)
                return handle.read(length)
        with storage.open_input(self.path) as handle, tarfile.open(fileobj=handle, mode="r|gz") as tar:
            for entry in tar:
                if posixpath.basename(entry.name) == member:
                    stream = tar.extractfile(entry)
                    skipped = 0  # a streamed tar member cannot seek: read up to the first record
                    while skipped < start and (chunk := stream.read(min(start - skipped, 2**20))):
                        skipped += len(chunk)
                    return stream.read(length)
        raise FileNotFoundError(f"{member} vanished from {self.path}")

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        for member, group in groupby(items, key=lambda item: item.ref[0]):
            group = list(group)
            first = group[0].ref[1]
            records = self._read_records(member, first, group[-1].ref[1] - first + 1)
            records = np.frombuffer(records, np.uint8).reshape(-1, CIFAR10_RECORD)
            for item in group:
                record = records[item.ref[1] - first]
                pixels = record[1:].reshape(3, 32, 32).transpose(1, 2, 0)  # planes -> [32, 32, RGB]
                yield Loaded(item.id, int(record[0]), pixels)


class FashionMnistSource(ImageSource):
    """Fashion-MNIST IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``); each 28 x 28 grey
    image is zero-padded to 32 x 32 and copied to R, G and B. Ids: ``train/00042``."""

    def __init__(self, folder: str | None, split: str) -> None:
        prefixes = {"train": "train", "test": "t10k"}
        if split not in prefixes:
            raise ValueError(f"--split must be train or test for fashion-mnist, got {split!r}")
        self.folder = storage.normalize(folder or FASHION_MNIST_DIR)
        self.split = split
        self.spec = f"fashion-mnist:{self.folder}"
        prefix = prefixes[split]
        self.images_uri = self._find(f"{prefix}-images-idx3-ubyte")
        self.labels_uri = self._find(f"{prefix}-labels-idx1-ubyte")
        header = np.frombuffer(self._read(self.images_uri, 0, 16), ">u4")
        if header[0] != 2051 or tuple(header[2:]) != (28, 28):
            raise ValueError(f"{self.images_uri} is not an IDX file of 28x28 images (header {header.tolist()})")
        self.count = int(header[1])

    def _find(self, name: str) -> str:
        for candidate in (name + ".gz", name):
            uri = storage.join(self.folder, candidate)
            if storage.exists(uri):
                return uri
        hint = " (apt-get install dataset-fashion-mnist)" if self.folder == FASHION_MNIST_DIR else ""
        raise ValueError(f"no {name}[.gz] in {self.folder}{hint}: give fashion-mnist:PATH to the IDX files")

    @staticmethod
    def _read(uri: str, start: int, length: int) -> bytes:
        with storage.open_input(uri) as handle:
            stream = gzip.GzipFile(fileobj=handle) if uri.endswith(".gz") else handle
            stream.seek(start)
            return stream.read(length)

    def items(self) -> list[Item]:
        return [Item(f"{self.split}/{i:05d}", i) for i in range(self.count)]

    def class_names(self) -> list[str] | None:
        return list(FASHION_MNIST_CLASSES)

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        first, count = items[0].ref, len(items)
        pixels = np.frombuffer(self._read(self.images_uri, 16 + 784 * first, 784 * count), np.uint8)
        labels = np.frombuffer(self._read(self.labels_uri, 8 + first, count), np.uint8)
        padded = np.pad(pixels.reshape(count, 28, 28), ((0, 0), (2, 2), (2, 2)))  # [n, 32, 32]
        for item in items:
            k = item.ref - first
            yield Loaded(item.id, int(labels[k]), np.repeat(padded[k][..., None], 3, axis=-1))


class PhotosSource(ImageSource):
    """``count`` crops of the bundled photos at ``size`` x ``size`` (dctdiff.data.bundled_photos, crop i depends only
    on (seed, i)). Ids: ``photos-s0/000042``."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.count, self.size, self.seed = count, size, seed
        self.spec = "photos"

    def items(self) -> list[Item]:
        return [Item(f"photos-s{self.seed}/{i:06d}", i) for i in range(self.count)]

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        from dctdiff.data.bundled_photos import photo_crops

        first = items[0].ref
        crops = photo_crops(items[-1].ref + 1, self.size, self.seed)[first:]
        for item in items:
            yield Loaded(item.id, -1, crops[item.ref - first])


class ParquetSource(ImageSource):
    """Parquet files as Hugging Face datasets exports them: an ``image`` struct column with ``bytes``
    (encoded PNG/JPEG...) and optionally an integer ``label``. ``path`` is one file or a folder
    (searched recursively). Ids: ``<file>/<row>``; class names from the ClassLabel feature."""

    def __init__(self, path: str) -> None:
        if not storage.exists(path):
            raise ValueError(f"parquet source {path} does not exist")
        self.path = storage.normalize(path)
        self.spec = f"parquet:{self.path}"
        if storage.is_dir(self.path):
            self.files = [e.relative for e in storage.list_files(self.path) if e.relative.endswith(".parquet")]
            if not self.files:
                raise ValueError(f"no .parquet files under {self.path}")
        else:
            self.files = [""]
        schema = self._parquet(self.files[0]).schema_arrow
        image = schema.field("image").type if "image" in schema.names else None
        if image is None or not hasattr(image, "get_field_index") or image.get_field_index("bytes") < 0:
            raise ValueError(
                f"{self.path} needs an `image` column that is a struct with `bytes` (the Hugging Face datasets "
                f"layout); found columns {schema.names}"
            )
        self.has_label = "label" in schema.names
        self._classes = self._hf_class_names(schema.metadata or {})

    def _uri(self, relative: str) -> str:
        return storage.join(self.path, relative) if relative else self.path

    def _parquet(self, relative: str) -> pq.ParquetFile:
        fs, path = storage.resolve(self._uri(relative))
        return pq.ParquetFile(fs.open_input_file(path))

    @staticmethod
    def _hf_class_names(metadata: dict[bytes, bytes]) -> list[str] | None:
        try:
            features = json.loads(metadata[b"huggingface"])["info"]["features"]
            return list(features["label"]["names"])
        except (KeyError, TypeError, ValueError):
            return None

    def items(self) -> list[Item]:
        items = []
        for relative in self.files:
            rows = self._parquet(relative).metadata.num_rows
            name = relative or posixpath.basename(self.path)
            items.extend(Item(f"{name}/{row:06d}", [relative, row]) for row in range(rows))
        return items

    def class_names(self) -> list[str] | None:
        return self._classes

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        columns = ["image", "label"] if self.has_label else ["image"]
        for relative, group in groupby(items, key=lambda item: item.ref[0]):
            group = list(group)
            parquet = self._parquet(relative)
            first, last = group[0].ref[1], group[-1].ref[1]
            groups, offset, start = [], 0, None
            for g in range(parquet.metadata.num_row_groups):  # row groups overlapping [first, last]
                rows = parquet.metadata.row_group(g).num_rows
                if offset + rows > first and offset <= last:
                    groups.append(g)
                    start = offset if start is None else start
                offset += rows
            table = parquet.read_row_groups(groups, columns=columns).slice(first - start, last - first + 1)
            images = table.column("image").combine_chunks().field("bytes").to_pylist()
            labels = table.column("label").to_pylist() if self.has_label else [None] * len(images)
            for item in group:
                k = item.ref[1] - first
                data, label = images[k], labels[k]
                payload: Payload = data if data is not None else ImageRejected("unreadable", "image has no bytes")
                yield Loaded(item.id, -1 if label is None else int(label), payload)


def open_source(
    text: str,
    *,
    resolution: int,
    split: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    unlabeled: bool = False,
) -> ImageSource:
    """Parse ``--source`` (see module docstring) and open it; bad specs raise ValueError saying what to give."""
    kind, _, path = text.partition(":")
    if split is not None and kind not in ("cifar10", "fashion-mnist"):
        raise ValueError(f"--split applies to cifar10 and fashion-mnist only, not to {kind!r} sources")
    if unlabeled and kind != "folder":
        raise ValueError(f"--unlabeled applies to folder sources only, not to {kind!r}")
    if kind in ("folder", "cifar10", "parquet") and not path:
        raise ValueError(f"--source {kind}: needs a path, e.g. {kind}:/data/{kind}")
    if kind == "folder":
        return FolderSource(path, unlabeled=unlabeled)
    if kind == "cifar10":
        return Cifar10Source(path, split or "train")
    if kind == "fashion-mnist":
        return FashionMnistSource(path or None, split or "train")
    if kind == "photos" and not path:
        return PhotosSource(DEFAULT_PHOTOS if limit is None else limit, resolution, seed)
    if kind == "parquet":
        return ParquetSource(path)
    raise ValueError(f"unknown --source {text!r}: use {SOURCE_FORMS}")
