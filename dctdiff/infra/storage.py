"""Storage URIs through pyarrow filesystems: one code path for local folders, ``file://`` and object
stores (``s3://``, ``gs://``, ``hdfs://``, ... whatever ``pyarrow.fs.FileSystem.from_uri`` knows).

Local writes are atomic (a hidden temporary file beside the target, then a rename), so a killed job
never leaves a half-written file under the final name; an object-store upload only becomes visible
when it completes, so it is written in place. Temporary files are named ``.NAME.<hex>.tmp``
(hidden, ignored by Parquet readers) and :func:`remove_temporaries` clears the ones a killed run left.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator

import pyarrow.fs as pafs

TEMPORARY_SUFFIX = ".tmp"


def _has_scheme(uri: str) -> bool:
    head, sep, _ = uri.partition("://")
    return bool(sep) and head.isidentifier()


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``uri`` -> (filesystem, path inside it). Plain paths may be relative to the working directory."""
    if not uri:
        raise ValueError("empty storage path: give a local folder or a URI such as s3://bucket/prefix")
    if not _has_scheme(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError as error:  # pyarrow.ArrowInvalid is a ValueError
        raise ValueError(f"cannot open {uri!r}: {error} (use a local path or a URI pyarrow supports)") from error


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return isinstance(resolve(uri)[0], pafs.LocalFileSystem)


def normalize(uri: str) -> str:
    """A canonical spelling: absolute path for local paths, the URI unchanged (minus a trailing /) otherwise."""
    if _has_scheme(uri) and not uri.startswith("file://"):
        return uri.rstrip("/")
    return resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Append ``/``-separated path parts to a path or URI."""
    if not _has_scheme(uri):
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    """Whether a file or folder exists at ``uri``."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """Whether ``uri`` is a folder (on object stores: a non-empty prefix)."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def make_dirs(uri: str) -> None:
    """Create a folder and its parents (no-op where it exists; object stores have no folders)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


@dataclass(frozen=True)
class FileEntry:
    """A file found by :func:`list_files`: its path relative to the listed folder (``/``-separated)."""

    relative: str
    size: int
    mtime: float  # seconds since the epoch


def list_files(uri: str, recursive: bool = True) -> list[FileEntry]:
    """Files under the folder ``uri``, sorted by relative path; hidden files and folders are skipped."""
    fs, root = resolve(uri)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri} is not a folder")
    skip = len(root.rstrip("/")) + 1  # selector results are root + "/" + relative path
    entries = []
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=recursive)):
        if item.type == pafs.FileType.File:
            relative = item.path[skip:]
            if not relative.startswith(".") and "/." not in relative:
                entries.append(FileEntry(relative, item.size, item.mtime.timestamp() if item.mtime else 0.0))
    entries.sort(key=lambda e: e.relative)
    return entries


def file_size(uri: str) -> int:
    """Size in bytes of the file at ``uri``."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {uri}")
    return int(info.size)


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.readall()


def read_many(folder_uri: str, relatives: Iterable[str]) -> Iterator[bytes | OSError]:
    """Contents of files under one folder (``/``-separated relative paths), the filesystem resolved
    once; a file that cannot be read yields its OSError instead of raising."""
    fs, root = resolve(folder_uri)
    for relative in relatives:
        try:
            with fs.open_input_stream(posixpath.join(root, relative)) as stream:
                yield stream.readall()
        except OSError as error:
            yield error


@contextmanager
def open_input(uri: str) -> Iterator[BinaryIO]:
    """A seekable binary file object for reading ``uri`` (for tarfile, gzip, Parquet...)."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as handle:
        yield handle


def _temporary_sibling(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")


@contextmanager
def atomic_path(uri: str) -> Iterator[tuple[pafs.FileSystem, str]]:
    """Yield (filesystem, path) to write the file ``uri`` to; it appears under its name only on success.

    Local files go to a hidden sibling first and are renamed into place (atomic on POSIX). Object
    stores get the final path: an upload is only visible once complete.
    """
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path) if _has_scheme(uri) else os.path.dirname(path), recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        yield fs, path
        return
    temporary = _temporary_sibling(path)
    try:
        yield fs, temporary
        fs.move(temporary, path)
    except BaseException:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (see :func:`atomic_path`)."""
    with atomic_path(uri) as (fs, path):
        with fs.open_output_stream(path) as stream:
            stream.write(data)


def read_json(uri: str) -> Any:
    """Parse the JSON file at ``uri``."""
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_bytes(uri, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def delete(uri: str) -> None:
    """Remove a file or a folder with everything in it; nothing happens where nothing exists."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def remove_temporaries(folder_uri: str) -> int:
    """Delete the temporary files that killed writers left directly in a local folder; returns how many."""
    fs, folder = resolve(folder_uri)
    if not isinstance(fs, pafs.LocalFileSystem) or fs.get_file_info(folder).type != pafs.FileType.Directory:
        return 0
    removed = 0
    for item in fs.get_file_info(pafs.FileSelector(folder)):
        name = os.path.basename(item.path)
        if item.type == pafs.FileType.File and name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
            fs.delete_file(item.path)
            removed += 1
    return removed


def tree_size(uri: str) -> int:
    """Total bytes of the files under a folder (0 where it does not exist)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return 0
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)
