"""Image sources: what `dctdiff prepare` reads, and the prepare sources evaluation image sets accept.

A source is listed once on the driver (:meth:`ImageSource.items`: a sorted list of small work items
with stable ids) and read in pieces on the workers (:meth:`ImageSource.load`: pixels or encoded
bytes per item, or the reason the item cannot be read). Each kind of source is one class registered in
:data:`SOURCES` (:func:`register_source`): its spec (``KIND``, ``KIND:PATH`` or ``KIND[:PATH]``), its
help line, the jobs that accept it and the prepare flags it takes live on that class, and
:func:`open_source`, the image sets and the commands' ``--help`` read them from there
(docs/ARCHITECTURE.md, "Extending").

PATH may be a local path or any URI pyarrow understands (dctdiff.infra.storage). Every good record is kept:
what a listing leaves out (links that loop or dangle, hidden files, the run's output folder, a file's
truncated tail, ``dedupe``'d copies) is returned by :meth:`ImageSource.skipped` with the reason, for
report.json.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby
from typing import Any, ClassVar, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dctdiff.data.image_decoding import ImageRejected, Payload
from dctdiff.infra import storage
from dctdiff.infra.storage import FileEntry, Skipped

# The jobs that read sources (ImageSource.jobs): prepare, and the evaluation image sets (evaluate, upsample --compare).
PREPARE, EVALUATE = "prepare", "evaluate"
REQUIRED, OPTIONAL, NONE = "required", "optional", "none"  # whether a spec has a PATH (ImageSource.path)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_RECORD = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes row-major
CIFAR10_SPLITS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
DEFAULT_PHOTOS = 1000
IDX_IMAGE_BYTES = 28 * 28
GZIP_CHUNK = 2**20
DIGEST_BYTES = 16  # of sha256: what identifies identical content
MISSING_RECORD = ImageRejected("unreadable", "record missing: the file is shorter than when it was listed")


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


@dataclass(frozen=True)
class SourceOptions:
    """What a job gives when it opens a source: the resolution (photo crops) and prepare's flags."""

    resolution: int
    split: str | None = None
    seed: int = 0
    limit: int | None = None
    unlabeled: bool = False
    dedupe: bool = False
    exclude: tuple[str, ...] = ()

    def given_flags(self) -> list[str]:
        """The source flags set: each must be in the opened kind's ``flags``."""
        given = {"--split": self.split is not None, "--unlabeled": self.unlabeled, "--dedupe": self.dedupe}
        return [flag for flag, on in given.items() if on]


class ImageSource(ABC):
    """Lists work items on the driver and reads them on the workers (must pickle cheaply).

    A concrete kind is registered with :func:`register_source` and declares, as class attributes,
    ``kind`` (the spec's prefix), ``path`` (REQUIRED: ``KIND:PATH``; OPTIONAL: ``KIND[:PATH]``; NONE:
    ``KIND``), ``help`` (its line in ``--help``), ``jobs`` (PREPARE, EVALUATE: which jobs accept it) and
    ``flags`` (the prepare flags it takes beyond the common ones), and opens a spec in :meth:`from_spec`.
    """

    spec: str
    kind: ClassVar[str]
    path: ClassVar[str] = REQUIRED
    help: ClassVar[str]
    jobs: ClassVar[frozenset[str]] = frozenset({PREPARE})
    flags: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    @abstractmethod
    def from_spec(cls, path: str, options: SourceOptions) -> ImageSource:
        """The source of the spec ``KIND:path`` (``path`` is "" where the spec has none)."""

    @classmethod
    def form(cls) -> str:
        """How the spec is written: ``folder:PATH``, ``fashion-mnist[:PATH]``, ``photos``."""
        return cls.kind + {REQUIRED: ":PATH", OPTIONAL: "[:PATH]", NONE: ""}[cls.path]

    @abstractmethod
    def items(self) -> list[Item]:
        """All items, in a fixed order (the order of the output rows)."""

    @abstractmethod
    def load(self, items: list[Item]) -> Iterator[Loaded]:
        """Read ``items`` (a contiguous run of :meth:`items`), one Loaded per item, in order."""

    def class_names(self) -> list[str] | None:
        """Names of labels 0..K-1 (written to labels.json), or None for unlabeled data."""
        return None

    def single_channel(self) -> bool:
        """Whether every image is known in advance to be grey (``prepare --colour auto`` then picks grey).
        False where that would need reading every image first (folders, archives)."""
        return False

    def skipped(self) -> list[Skipped]:
        """What the listing left out and why (links, hidden files, truncated tails...), for report.json."""
        return []


SOURCES: dict[str, type[ImageSource]] = {}  # kind -> class, in registration order (the order of --help)
Source = TypeVar("Source", bound=type[ImageSource])


def register_source(cls: Source) -> Source:
    """Class decorator: make ``cls`` the source of specs ``cls.kind[:PATH]`` for the jobs in ``cls.jobs``."""
    SOURCES[cls.kind] = cls
    return cls


def source_kinds(job: str) -> list[type[ImageSource]]:
    """The registered source classes that ``job`` (PREPARE or EVALUATE) accepts, in registration order."""
    return [cls for cls in SOURCES.values() if job in cls.jobs]


def source_class(spec: str, job: str) -> type[ImageSource] | None:
    """The class of the spec's kind (the text before the first ``:``) if ``job`` accepts it, else None."""
    cls = SOURCES.get(spec.partition(":")[0])
    return cls if cls is not None and job in cls.jobs else None


def source_forms(job: str) -> str:
    """The spec forms ``job`` accepts, for messages: ``folder:PATH, cifar10:PATH, ... or parquet:PATH``."""
    forms = [cls.form() for cls in source_kinds(job)]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


def describe_sources(job: str) -> str:
    """One line per source kind ``job`` accepts (form and help; for prepare, the flags it takes): ``--help`` text."""
    lines = []
    for cls in source_kinds(job):
        flags = f"; {', '.join(sorted(cls.flags))}" if job == PREPARE and cls.flags else ""
        lines.append(f"  {cls.form():<22} {cls.help}{flags}")
    return "\n".join(lines)


def _unreadable(error: Exception) -> ImageRejected:
    return ImageRejected("unreadable", f"{type(error).__name__}: {error}")


def _complete_records(data: bytes, record: int) -> np.ndarray:
    """The whole records of ``record`` bytes at the start of ``data`` as uint8 [n, record]."""
    whole = len(data) // record
    return np.frombuffer(data, np.uint8, count=whole * record).reshape(whole, record)


def _truncated(name: str, promised: int, present: int, partial: int, unit: str) -> list[Skipped]:
    """A report entry for a file with fewer whole records than its header promises or a partial last
    record (the whole records are kept); none for an intact file."""
    if present >= promised and not partial:
        return []
    detail = f"{present} complete {unit}" + (f" of {promised} the header promises" if present < promised else "")
    return [Skipped(name, "truncated", detail + (f", then {partial} bytes of a partial record" if partial else ""))]


def content_digest(payload: bytes | np.ndarray) -> bytes:
    """What identifies a payload's content: the first DIGEST_BYTES of the sha256 of its bytes (encoded
    file or pixel array; the shape counts for arrays)."""
    if isinstance(payload, np.ndarray):
        payload = np.ascontiguousarray(payload).tobytes() + str(payload.shape).encode()
    return hashlib.sha256(payload).digest()[:DIGEST_BYTES]


def _duplicate_groups(root: str, files: list[FileEntry]) -> list[list[str]]:
    """Files with identical content (:func:`content_digest`; only files sharing a non-zero size are
    read), each group sorted, the groups sorted."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for entry in files:
        if entry.size:
            by_size[entry.size].append(entry.relative)
    candidates = [name for names in by_size.values() if len(names) > 1 for name in names]
    by_digest: dict[bytes, list[str]] = defaultdict(list)
    for name, data in zip(candidates, storage.read_many(root, candidates)):
        if isinstance(data, bytes):  # an unreadable file is rejected by the job
            by_digest[content_digest(data)].append(name)
    return sorted(sorted(names) for names in by_digest.values() if len(names) > 1)


def _dropped_duplicates(groups: list[list[str]]) -> list[Skipped]:
    """What ``dedupe`` leaves out: every file of a group of identical ones but the first."""
    return [Skipped(name, "duplicate", f"same content as {group[0]}") for group in groups for name in group[1:]]


@dataclass(frozen=True)
class FolderListing:
    """A folder source's listing: files (after dedupe), class names and skipped entries."""

    files: list[str]
    classes: list[str] | None
    skipped: list[Skipped]


@register_source
class FolderSource(ImageSource):
    """Every non-hidden file under ``root`` (recursive, sorted by path; the id is the relative path).

    Labels: when no image file sits directly in ``root``, the sorted first-level subfolder names are
    the classes (ImageNet's train/<wnid>/ layout); ``unlabeled`` turns this off (e.g. FFHQ's
    numbered chunk folders). Files that do not decode are rejected by the job, not skipped. Each real
    folder is listed once (links that loop are skipped); folders in ``exclude`` (the run's output) are
    not read; ``dedupe`` reads the files that share a size and keeps the first of each identical group.
    """

    kind = "folder"
    help = "image files found recursively; class subfolders give labels"
    flags = frozenset({"--unlabeled", "--dedupe"})

    def __init__(self, root: str, unlabeled: bool = False, dedupe: bool = False, exclude: Iterable[str] = ()) -> None:
        storage.require_exists(root, "--source folder:PATH", "give a folder of images")
        if not storage.is_dir(root):
            raise ValueError(f"--source folder:PATH {root} is not a folder: give a folder of images")
        self.root = storage.normalize(root)
        self.spec = f"folder:{self.root}"
        self.unlabeled = unlabeled
        self.dedupe = dedupe
        self.exclude = tuple(exclude)
        self._listing: FolderListing | None = None

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> FolderSource:
        return cls(path, unlabeled=options.unlabeled, dedupe=options.dedupe, exclude=options.exclude)

    def _list(self) -> FolderListing:
        """The listing, made once: the driver asks for items, classes and skips."""
        if self._listing is None:
            walk = storage.walk_files(self.root, exclude=self.exclude)
            names = [entry.relative for entry in walk.files]
            dropped = _dropped_duplicates(_duplicate_groups(self.root, walk.files)) if self.dedupe else []
            gone = {entry.relative for entry in dropped}
            skipped = sorted([*walk.skipped, *dropped], key=lambda e: e.relative)
            self._listing = FolderListing([f for f in names if f not in gone], self._classes(names), skipped)
        return self._listing

    def _classes(self, names: list[str]) -> list[str] | None:
        """The first-level folder names, unless an image sits in the root or ``unlabeled`` is set."""
        top_level_images = any("/" not in f and f.lower().endswith(IMAGE_EXTENSIONS) for f in names)
        folders = sorted({f.split("/", 1)[0] for f in names if "/" in f})
        return None if self.unlabeled or top_level_images or not folders else folders

    def items(self) -> list[Item]:
        listing = self._list()
        index = {name: i for i, name in enumerate(listing.classes or [])}
        return [Item(f, index.get(f.split("/", 1)[0], -1) if "/" in f else -1) for f in listing.files]

    def class_names(self) -> list[str] | None:
        return self._list().classes

    def skipped(self) -> list[Skipped]:
        return self._list().skipped

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_listing": None}  # workers get their items with each task

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        contents = storage.read_many(self.root, (item.id for item in items))
        for item, data in zip(items, contents):
            yield Loaded(item.id, int(item.ref), _unreadable(data) if isinstance(data, OSError) else data)


@register_source
class Cifar10Source(ImageSource):
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes, 32 x 32).

    ``path`` is ``cifar-10-binary.tar.gz`` or a folder holding the ``.bin`` files (directly or in
    ``cifar-10-batches-bin/``). Ids: ``data_batch_1/00042``, ``test_batch/00007``.
    """

    kind = "cifar10"
    help = "CIFAR-10 binary version (cifar-10-binary.tar.gz or its folder)"
    jobs = frozenset({PREPARE, EVALUATE})
    flags = frozenset({"--split"})

    def __init__(self, path: str, split: str) -> None:
        if split not in CIFAR10_SPLITS:
            raise ValueError(f"--split must be train or test for cifar10, got {split!r}")
        storage.require_exists(path, "--source cifar10:PATH", "give cifar-10-binary.tar.gz or its folder")
        self.path = storage.normalize(path)
        self.split = split
        self.spec = f"cifar10:{self.path}"
        self.archive = not storage.is_dir(self.path)
        self._skipped: list[Skipped] = []
        self._members, self._classes = self._inventory()

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> Cifar10Source:
        return cls(path, options.split or "train")

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
        ordered = {name: sizes[name] // CIFAR10_RECORD for name in CIFAR10_SPLITS[self.split] if name in sizes}
        for name, count in ordered.items():  # a partial record at the end is dropped, the rest kept
            self._skipped += _truncated(name, count, count, sizes[name] % CIFAR10_RECORD, "records")
        return ordered, classes

    def items(self) -> list[Item]:
        return [
            Item(f"{name.removesuffix('.bin')}/{i:05d}", [name, i])
            for name, count in self._members.items()
            for i in range(count)
        ]

    def class_names(self) -> list[str] | None:
        return self._classes

    def skipped(self) -> list[Skipped]:
        return self._skipped

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
            records = _complete_records(self._read_records(member, first, group[-1].ref[1] - first + 1), CIFAR10_RECORD)
            for item in group:
                k = item.ref[1] - first
                if k >= len(records):
                    yield Loaded(item.id, -1, MISSING_RECORD)
                    continue
                pixels = records[k, 1:].reshape(3, 32, 32).transpose(1, 2, 0)  # planes -> [32, 32, RGB]
                yield Loaded(item.id, int(records[k, 0]), pixels)


def _gunzip(handle: Any) -> Iterator[bytes]:
    """The decompressed content of a gzip stream in chunks (members concatenated); a cut or damaged
    stream ends with the data before the damage instead of raising."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while chunk := handle.read(GZIP_CHUNK):
        while chunk:
            try:
                yield decompressor.decompress(chunk)
            except zlib.error:
                return
            if not decompressor.eof:
                break
            chunk, decompressor = decompressor.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)


def _read_content(uri: str, start: int, length: int) -> bytes:
    """Up to ``length`` bytes from offset ``start`` of a file's content (``.gz`` decompressed)."""
    with storage.open_input(uri) as handle:
        if not uri.endswith(".gz"):
            handle.seek(start)
            return handle.read(length)
        out, position = bytearray(), 0
        for chunk in _gunzip(handle):
            if position + len(chunk) > start:
                out += chunk[max(start - position, 0) : max(start - position, 0) + length - len(out)]
            position += len(chunk)
            if len(out) >= length:
                break
        return bytes(out)


def _content_size(uri: str) -> int:
    """Bytes of a file's content (``.gz``: decompressed, as far as the stream is intact)."""
    if not uri.endswith(".gz"):
        return storage.file_size(uri)
    with storage.open_input(uri) as handle:
        return sum(len(chunk) for chunk in _gunzip(handle))


@register_source
class FashionMnistSource(ImageSource):
    """Fashion-MNIST IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``); each 28 x 28 grey
    image is zero-padded to 32 x 32 and copied to R, G and B. Ids: ``train/00042``. A file holding
    fewer records than its header says gives its complete records (with labels) and a report entry."""

    kind = "fashion-mnist"
    path = OPTIONAL
    help = f"Fashion-MNIST IDX files (default {FASHION_MNIST_DIR}), padded to 32x32"
    jobs = frozenset({PREPARE, EVALUATE})
    flags = frozenset({"--split"})

    def __init__(self, folder: str | None, split: str) -> None:
        prefixes = {"train": "train", "test": "t10k"}
        if split not in prefixes:
            raise ValueError(f"--split must be train or test for fashion-mnist, got {split!r}")
        hint = " (apt-get install dataset-fashion-mnist)" if not folder else ""
        storage.require_exists(
            folder or FASHION_MNIST_DIR, "--source fashion-mnist:PATH", f"give the folder of the IDX files{hint}"
        )
        self.folder = storage.normalize(folder or FASHION_MNIST_DIR)
        self.split = split
        self.spec = f"fashion-mnist:{self.folder}"
        prefix = prefixes[split]
        self.images_uri = self._find(f"{prefix}-images-idx3-ubyte")
        self.labels_uri = self._find(f"{prefix}-labels-idx1-ubyte")
        images, self._skipped = self._records(self.images_uri, 2051, (28, 28), "images")
        labels, label_skips = self._records(self.labels_uri, 2049, (), "labels")
        self._skipped += label_skips
        self.count = min(images, labels)

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> FashionMnistSource:
        return cls(path or None, options.split or "train")

    def _find(self, name: str) -> str:
        for candidate in (name + ".gz", name):
            uri = storage.join(self.folder, candidate)
            if storage.exists(uri):
                return uri
        hint = " (apt-get install dataset-fashion-mnist)" if self.folder == FASHION_MNIST_DIR else ""
        raise ValueError(f"no {name}[.gz] in {self.folder}{hint}: give fashion-mnist:PATH to the IDX files")

    @staticmethod
    def _records(uri: str, magic: int, shape: tuple[int, ...], unit: str) -> tuple[int, list[Skipped]]:
        """How many whole records the IDX file holds (at most its header count), and a truncation entry."""
        size = 8 + 4 * len(shape)
        header = np.frombuffer(_read_content(uri, 0, size).ljust(size, b"\0"), ">u4")
        if header[0] != magic or tuple(header[2:]) != shape:
            raise ValueError(f"{uri} is not an IDX file of {unit} {shape} (header {header.tolist()})")
        record = int(np.prod(shape))
        data = _content_size(uri) - size
        present = min(int(header[1]), data // record)
        partial = data - present * record if present < header[1] else 0
        return present, _truncated(posixpath.basename(uri), int(header[1]), present, partial, unit)

    def items(self) -> list[Item]:
        return [Item(f"{self.split}/{i:05d}", i) for i in range(self.count)]

    def class_names(self) -> list[str] | None:
        return list(FASHION_MNIST_CLASSES)

    def single_channel(self) -> bool:
        """IDX images are grey: always."""
        return True

    def skipped(self) -> list[Skipped]:
        return self._skipped

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        first, count = items[0].ref, len(items)
        data = _read_content(self.images_uri, 16 + IDX_IMAGE_BYTES * first, IDX_IMAGE_BYTES * count)
        pixels = _complete_records(data, IDX_IMAGE_BYTES)
        labels = _complete_records(_read_content(self.labels_uri, 8 + first, count), 1)[:, 0]
        padded = np.pad(pixels.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2)))  # [n, 32, 32]
        for item in items:
            k = item.ref - first
            if k >= min(len(padded), len(labels)):
                yield Loaded(item.id, -1, MISSING_RECORD)
            else:
                yield Loaded(item.id, int(labels[k]), np.repeat(padded[k][..., None], 3, axis=-1))


@register_source
class PhotosSource(ImageSource):
    """``count`` crops of the bundled photos at ``size`` x ``size`` (dctdiff.data.bundled_photos, crop i depends only
    on (seed, i)). Ids: ``photos-s0/000042``."""

    kind = "photos"
    path = NONE
    help = f"crops of the photos bundled with scikit-image / scikit-learn (--limit N crops, default {DEFAULT_PHOTOS}; --seed)"

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.count, self.size, self.seed = count, size, seed
        self.spec = "photos"

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> PhotosSource:
        return cls(DEFAULT_PHOTOS if options.limit is None else options.limit, options.resolution, options.seed)

    def items(self) -> list[Item]:
        return [Item(f"photos-s{self.seed}/{i:06d}", i) for i in range(self.count)]

    def load(self, items: list[Item]) -> Iterator[Loaded]:
        from dctdiff.data.bundled_photos import photo_crops

        first = items[0].ref
        crops = photo_crops(items[-1].ref + 1, self.size, self.seed)[first:]
        for item in items:
            yield Loaded(item.id, -1, crops[item.ref - first])


@register_source
class ParquetSource(ImageSource):
    """Parquet files as Hugging Face datasets exports them: an ``image`` struct column with ``bytes``
    (encoded PNG/JPEG...) and optionally an integer ``label``. ``path`` is one file or a folder
    (searched recursively; folders in ``exclude`` left out). Ids: ``<file>/<row>``; class names from the
    ClassLabel feature. A file whose footer cannot be read is skipped with a report entry."""

    kind = "parquet"
    help = "Parquet file or folder in the Hugging Face datasets layout (image struct with bytes, optional label)"
    jobs = frozenset({PREPARE, EVALUATE})

    def __init__(self, path: str, exclude: Iterable[str] = ()) -> None:
        storage.require_exists(path, "--source parquet:PATH", "give a Parquet file or a folder of them")
        self.path = storage.normalize(path)
        self.spec = f"parquet:{self.path}"
        self._skipped: list[Skipped] = []
        if storage.is_dir(self.path):
            walk = storage.walk_files(self.path, exclude=exclude)
            self._skipped = walk.skipped
            files = [e.relative for e in walk.files if e.relative.endswith(".parquet")]
            if not files:
                raise ValueError(f"no .parquet files under {self.path}")
        else:
            files = [""]
        self.rows = self._row_counts(files)
        if not self.rows:
            reasons = "; ".join(f"{e.relative}: {e.detail}" for e in self._skipped if e.reason == "unreadable")
            raise ValueError(f"no readable .parquet file in {self.path}: {reasons}")
        schema = self._parquet(next(iter(self.rows))).schema_arrow
        image = schema.field("image").type if "image" in schema.names else None
        if image is None or not hasattr(image, "get_field_index") or image.get_field_index("bytes") < 0:
            raise ValueError(
                f"{self.path} needs an `image` column that is a struct with `bytes` (the Hugging Face datasets "
                f"layout); found columns {schema.names}"
            )
        self.has_label = "label" in schema.names
        self._classes = self._hf_class_names(schema.metadata or {})

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> ParquetSource:
        return cls(path, exclude=options.exclude)

    def _uri(self, relative: str) -> str:
        return storage.join(self.path, relative) if relative else self.path

    def _parquet(self, relative: str) -> pq.ParquetFile:
        fs, path = storage.resolve(self._uri(relative))
        return pq.ParquetFile(fs.open_input_file(path))

    def _row_counts(self, files: list[str]) -> dict[str, int]:
        """Rows of each readable file; an unreadable one (damaged footer...) is recorded as skipped."""
        rows = {}
        for relative in files:
            try:
                rows[relative] = self._parquet(relative).metadata.num_rows
            except (OSError, pa.ArrowException) as error:
                name = relative or posixpath.basename(self.path)
                self._skipped.append(Skipped(name, "unreadable", f"{type(error).__name__}: {error}"))
        return rows

    @staticmethod
    def _hf_class_names(metadata: dict[bytes, bytes]) -> list[str] | None:
        try:
            features = json.loads(metadata[b"huggingface"])["info"]["features"]
            return list(features["label"]["names"])
        except (KeyError, TypeError, ValueError):
            return None

    def items(self) -> list[Item]:
        items = []
        for relative, rows in self.rows.items():
            name = relative or posixpath.basename(self.path)
            items.extend(Item(f"{name}/{row:06d}", [relative, row]) for row in range(rows))
        return items

    def class_names(self) -> list[str] | None:
        return self._classes

    def skipped(self) -> list[Skipped]:
        return sorted(self._skipped, key=lambda e: e.relative)

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
    dedupe: bool = False,
    exclude: Iterable[str] = (),
    job: str = PREPARE,
) -> ImageSource:
    """Parse a source spec (``KIND``, ``KIND:PATH``; :data:`SOURCES`) that ``job`` accepts and open it;
    bad specs raise ValueError saying what to give. ``exclude``: folders a folder or parquet source does
    not read (the run's own output)."""
    kind, colon, path = text.partition(":")
    cls = source_class(text, job)
    if cls is None or (cls.path == NONE and colon):
        raise ValueError(f"unknown --source {text!r}: use {source_forms(job)}")
    options = SourceOptions(resolution, split, seed, limit, unlabeled, dedupe, tuple(exclude))
    for flag in options.given_flags():
        if flag not in cls.flags:
            takers = " and ".join(other.kind for other in source_kinds(job) if flag in other.flags)
            raise ValueError(f"{flag} applies to {takers} sources only, not to {kind!r} sources")
    if cls.path == REQUIRED and not path:
        raise ValueError(f"--source {kind}: needs a path, e.g. {kind}:/data/{kind}")
    return cls.from_spec(path, options)
