"""Checkpoint folders that verify themselves: safetensors + state.json, and a manifest.json written last.

A checkpoint folder holds ``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` and
``state.json``; ``manifest.json`` records the size and SHA-256 of each and is written after them, so a
folder without a valid manifest is partial. Folders written before manifests existed are refused as
such (there is no way to tell them from partial ones). Paths may be local folders or URIs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import torch
from safetensors.torch import save as save_tensors

from dctdiff.infra import storage

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_FILES = ("model", "ema", "optimizer")  # <name>.safetensors
STATE = "state.json"
PREFIX = "checkpoint_"  # Ray Train's checkpoint folders under <storage>/<name>/


class CorruptCheckpointError(ValueError):
    """A checkpoint folder that is partial, truncated or altered; the message is one line naming the file."""


def _entry(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_checkpoint(directory: str, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
    """Write ``<name>.safetensors`` for each of ``tensors`` (model, ema, optimizer) and state.json, then the
    manifest; every file is written atomically."""
    files = {f"{name}.safetensors": save_tensors(tensors[name]) for name in TENSOR_FILES}
    files[STATE] = (json.dumps({"version": CHECKPOINT_VERSION, **state}, indent=2) + "\n").encode()
    for name, data in files.items():
        storage.write_bytes(storage.join(directory, name), data)
    storage.write_json(
        storage.join(directory, MANIFEST), {"files": {name: _entry(data) for name, data in files.items()}}
    )


def _manifest(directory: str) -> dict[str, dict[str, Any]]:
    """The manifest's file map; raises CorruptCheckpointError if it is missing or unreadable."""
    uri = storage.join(directory, MANIFEST)
    if not storage.exists(uri):
        raise CorruptCheckpointError(
            f"checkpoint {directory} has no {MANIFEST}: it is partial (its writer stopped) or from a dctdiff "
            "before checksums"
        )
    try:
        files = json.loads(storage.read_bytes(uri))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"checkpoint {directory}: {MANIFEST} is not valid JSON ({error})") from None
    missing = [name for name in (*(f"{n}.safetensors" for n in TENSOR_FILES), STATE) if name not in files]
    if missing:
        raise CorruptCheckpointError(f"checkpoint {directory}: {MANIFEST} does not list {', '.join(missing)}")
    return files


def _checked(directory: str, name: str, entry: dict[str, Any]) -> bytes:
    """The bytes of one file of the checkpoint, after checking them against its manifest entry."""
    uri = storage.join(directory, name)
    if not storage.exists(uri):
        raise CorruptCheckpointError(f"checkpoint {directory}: {name} is missing")
    data = storage.read_bytes(uri)
    if len(data) != entry["size"]:
        raise CorruptCheckpointError(
            f"checkpoint {directory}: {name} is truncated or resized ({len(data)} bytes, expected {entry['size']})"
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CorruptCheckpointError(f"checkpoint {directory}: {name} does not match its SHA-256 checksum")
    return data


def read_checkpoint_files(directory: str, names: Iterable[str]) -> dict[str, bytes]:
    """The verified contents of some files of a checkpoint (e.g. state.json and ema.safetensors)."""
    files = _manifest(directory)
    return {name: _checked(directory, name, files[name]) for name in names}


def verify_checkpoint(directory: str) -> None:
    """Raise CorruptCheckpointError unless every file of the checkpoint matches its manifest."""
    read_checkpoint_files(directory, _manifest(directory))


def read_state(data: bytes, directory: str) -> dict[str, Any]:
    """state.json's content, checked for the version this code writes."""
    state = json.loads(data)
    if state.get("version") != CHECKPOINT_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {directory} has version {state.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    return state


def checkpoint_folders(run_folder: str) -> list[str]:
    """The ``checkpoint_*`` folders of a run folder, oldest first (Ray names them by time)."""
    if not storage.is_dir(run_folder):
        return []
    names = {
        e.relative.split("/")[0]
        for e in storage.list_files(run_folder)
        if e.relative.count("/") == 1 and e.relative.startswith(PREFIX)
    }
    return [storage.join(run_folder, name) for name in sorted(names)]


def newest_intact(folders: list[str]) -> str | None:
    """The newest of ``folders`` (oldest first) that verifies; warns naming the corrupt newer ones and the one
    chosen. None if there are none; CorruptCheckpointError if all are corrupt."""
    problems: list[str] = []
    for folder in reversed(folders):
        try:
            verify_checkpoint(folder)
        except CorruptCheckpointError as error:
            problems.append(str(error))
            continue
        for problem in problems:
            log.warning("%s; using the newest intact checkpoint %s instead", problem, folder)
        return folder
    if problems:
        raise CorruptCheckpointError(f"no intact checkpoint: {'; '.join(problems)}")
    return None


def newest_checkpoint(path: str) -> str:
    """A checkpoint folder itself, or the newest intact ``checkpoint_*`` folder of a run folder (paths or URIs;
    a corrupt newer one is skipped with a warning). Raises CorruptCheckpointError if none is intact."""
    if storage.exists(storage.join(path, STATE)) or storage.exists(storage.join(path, MANIFEST)):
        return path
    chosen = newest_intact(checkpoint_folders(path))
    if chosen is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint folder (state.json) nor a run folder with checkpoints")
    return chosen
