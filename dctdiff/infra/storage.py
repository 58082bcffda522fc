"""Storage URIs through pyarrow filesystems: one code path for local folders, ``file://`` and object
stores (``s3://``, ``gs://``, ``hdfs://``, ... whatever ``pyarrow.fs.FileSystem.from_uri`` knows).

Local writes are atomic (a hidden temporary file beside the target, then a rename), so a killed job
never leaves a half-written file under the final name; an object-store upload only becomes visible
when it completes, so it is written in place. Temporary files are named ``.NAME.<hex>.tmp``
(hidden, ignored by Parquet readers) and :func:`remove_temporaries` clears the ones a killed run left.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import posixpath
import stat
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import pyarrow.fs as pafs

TEMPORARY_SUFFIX = ".tmp"
logger = logging.getLogger(__name__)


def _has_scheme(uri: str) -> bool:
    head, sep, _ = uri.partition("://")
    return bool(sep) and head.isidentifier()


# Schemes pyarrow lacks, served by the fsspec filesystem of an optional package (scheme -> package).
FSSPEC_SCHEMES = {"hf": "huggingface_hub"}


def _fsspec_filesystem(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """``uri`` through fsspec (wrapped for pyarrow); ValueError naming the package to install when missing."""
    package = FSSPEC_SCHEMES[scheme]
    try:
        import fsspec

        importlib.import_module(package)
    except ImportError:
        raise ValueError(
            f"cannot open {uri!r}: {scheme}:// needs {package}; install it (pip install {package})"
        ) from None
    fs, path = fsspec.core.url_to_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``uri`` -> (filesystem, path inside it). Plain paths may be relative to the working directory."""
    if not uri:
        raise ValueError("empty storage path: give a local folder or a URI such as s3://bucket/prefix")
    if not _has_scheme(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme = uri.partition("://")[0].lower()
    if scheme in FSSPEC_SCHEMES:
        return _fsspec_filesystem(uri, scheme)
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


class MissingPathError(FileNotFoundError, ValueError):
    """A path given to a job does not exist (a ValueError too: every job reports it as one line, exit 2)."""


def require_exists(uri: str, flag: str, fix: str = "") -> str:
    """``uri`` when a file or folder exists there; else MissingPathError ``{flag} {uri} does not exist``,
    followed by ``fix`` (how to get the right path). The one check of every input path a job takes."""
    if uri and exists(uri):
        return uri
    raise MissingPathError(f"{flag} {uri or repr(uri)} does not exist" + (f": {fix}" if fix else ""))


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


@dataclass(frozen=True)
class Skipped:
    """An entry a listing left out (``relative`` to the listed folder) and why: ``reason`` is a short
    kind (hidden, symlink loop, dangling link, already listed, unreadable, output folder...)."""

    relative: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Listing:
    """What :func:`walk_files` found: the files (sorted by relative path) and the entries it skipped."""

    files: list[FileEntry]
    skipped: list[Skipped]


def walk_files(uri: str, recursive: bool = True, exclude: Iterable[str] = ()) -> Listing:
    """Files under the folder ``uri`` and everything skipped, with the reason: hidden entries, folders in
    ``exclude`` (paths or URIs), and, on local disks, links that loop or dangle and folders already
    listed under another name (each real folder is listed once, symlinks followed)."""
    fs, root = resolve(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri} is not a folder")
    if isinstance(fs, pafs.LocalFileSystem):
        listing = _walk_local(root, recursive, [resolve(e)[1] for e in exclude])
    else:
        listing = _walk_remote(fs, root, recursive, [resolve(e)[1].rstrip("/") for e in exclude])
    listing.files.sort(key=lambda e: e.relative)
    listing.skipped.sort(key=lambda e: e.relative)
    return listing


def list_files(uri: str, recursive: bool = True) -> list[FileEntry]:
    """Files under the folder ``uri``, sorted by relative path (:func:`walk_files`); skipped entries
    other than hidden ones are logged."""
    listing = walk_files(uri, recursive)
    for entry in listing.skipped:
        if entry.reason != "hidden":
            logger.warning("skipped %s in %s: %s (%s)", entry.relative, uri, entry.reason, entry.detail)
    return listing.files


def _folder_id(path: str) -> tuple[int, int]:
    """(device, inode) of a folder: the same for every name (or link) it is reached by."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _walk_local(root: str, recursive: bool, exclude: list[str]) -> Listing:
    """Depth-first walk in sorted order that follows symlinks and enters each real folder once."""
    files: list[FileEntry] = []
    skipped: list[Skipped] = []
    excluded = {_folder_id(path) for path in exclude if os.path.isdir(path)}
    listed: dict[tuple[int, int], str] = {_folder_id(root): "."}

    def visit(path: str, relative: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as error:
            skipped.append(Skipped(relative, "unreadable", f"{type(error).__name__}: {error}"))
            return
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.name.startswith("."):
                skipped.append(Skipped(name, "hidden"))
                continue
            try:
                info = os.stat(entry.path)  # follows links
            except OSError as error:
                skipped.append(_unstatable(name, entry, error))
                continue
            if stat.S_ISREG(info.st_mode):
                files.append(FileEntry(name, info.st_size, info.st_mtime))
            elif not stat.S_ISDIR(info.st_mode):
                skipped.append(Skipped(name, "not a file", f"mode {stat.filemode(info.st_mode)}"))
            elif recursive:
                identity = (info.st_dev, info.st_ino)
                if identity in excluded:
                    skipped.append(Skipped(name, "output folder", "the output of this run is not read as input"))
                elif identity in ancestors:
                    skipped.append(Skipped(name, "symlink loop", f"leads back to {listed[identity]}"))
                elif identity in listed:
                    skipped.append(Skipped(name, "already listed", f"the same folder as {listed[identity]}"))
                else:
                    listed[identity] = name
                    visit(entry.path, name, ancestors | {identity})

    visit(root, "", frozenset(listed))
    return Listing(files, skipped)


def _unstatable(name: str, entry: os.DirEntry, error: OSError) -> Skipped:
    """Why an entry that ``os.stat`` refuses was skipped: a link that loops or dangles, else unreadable."""
    if not entry.is_symlink():
        return Skipped(name, "unreadable", f"{type(error).__name__}: {error}")
    reason = "symlink loop" if error.errno == errno.ELOOP else "dangling link"
    return Skipped(name, reason, f"-> {os.readlink(entry.path)}")


def _walk_remote(fs: pafs.FileSystem, root: str, recursive: bool, exclude: list[str]) -> Listing:
    """Object stores have no links: one recursive listing, hidden and excluded prefixes left out."""
    skip = len(root.rstrip("/")) + 1  # selector results are root + "/" + relative path
    files: list[FileEntry] = []
    skipped: dict[str, Skipped] = {}
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=recursive)):
        relative = item.path[skip:]
        parts = relative.split("/")
        hidden = next((k for k, part in enumerate(parts) if part.startswith(".")), None)
        outside = next((p for p in exclude if item.path == p or item.path.startswith(p + "/")), None)
        if outside is not None:
            name = outside[skip:]
            skipped[name] = Skipped(name, "output folder", "the output of this run is not read as input")
        elif hidden is not None:
            name = "/".join(parts[: hidden + 1])
            skipped[name] = Skipped(name, "hidden")
        elif item.type == pafs.FileType.File:
            files.append(FileEntry(relative, item.size, item.mtime.timestamp() if item.mtime else 0.0))
    return Listing(files, list(skipped.values()))


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


def write_files(folder_uri: str, files: Mapping[str, bytes]) -> list[str]:
    """Write each ``name: content`` of ``files`` into the folder ``folder_uri`` (each atomically, see
    :func:`write_bytes`); returns their URIs, in the order of ``files``."""
    uris = [join(folder_uri, name) for name in files]
    for uri, data in zip(uris, files.values()):
        write_bytes(uri, data)
    return uris


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


def check_writable(uri: str, flag: str = "--output") -> None:
    """Create the folder ``uri`` and write and remove a probe file in it, so that a job whose output cannot
    be written fails in seconds, before any work; ValueError (one line naming ``flag``) otherwise."""
    fs, path = resolve(uri)
    probe = posixpath.join(path, f".dctdiff-write-probe.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as stream:
            stream.write(b"")
        fs.delete_file(probe)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ValueError(f"cannot write to {flag} {uri} ({reason}); choose a folder this job can create") from None
