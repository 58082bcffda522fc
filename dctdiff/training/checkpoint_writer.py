"""Rank 0's checkpoints written off the training step's critical path (docs/ARCHITECTURE.md, "Training").

``start`` copies the state into host buffers that are kept from one checkpoint to the next (pinned, with
non-blocking copies and one CUDA event, when the state is on a GPU): that is all the step waits for. A
thread then serialises, hashes and writes the checkpoint (``checkpoints.write_checkpoint``: the manifest
last) into a fresh local folder while training goes on. ``ready`` hands over the folder of a finished
write, which rank 0 attaches to its next ``ray.train.report``, so Ray Train only ever receives complete
checkpoints. The next ``start`` waits for the previous write (one set of buffers, one write at a time).
A write that fails or dies leaves a folder nobody hands over: the run's previous checkpoints stay the
newest intact ones (``checkpoints.newest_intact``).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import torch

from dctdiff.models.checkpoints import write_checkpoint

log = logging.getLogger(__name__)

Tensors = dict[str, dict[str, torch.Tensor]]  # {"model" | "ema" | "optimizer": state dict}
Writer = Callable[[str, Tensors, dict[str, Any]], None]  # (folder, tensors, state.json content)


def local_folder() -> str:
    """A new local folder for one checkpoint (Ray Train uploads it and deletes it afterwards)."""
    return tempfile.mkdtemp(prefix="dctdiff-checkpoint-")


class BackgroundCheckpoints:
    """Checkpoints written by a background thread, one at a time, handed over once complete."""

    def __init__(self, write: Writer = write_checkpoint, folder: Callable[[], str] = local_folder) -> None:
        self._write = write
        self._folder = folder
        self._buffers: Tensors = {}
        self._pending: tuple[threading.Thread, str] | None = None
        self._error: BaseException | None = None
        self._finished: str | None = None  # written, not yet handed over

    def start(self, tensors: Tensors, state: dict[str, Any]) -> None:
        """Snapshot ``tensors`` and ``state`` now and write them in the background; first waits for the
        previous write (and raises its error, if it failed)."""
        self._join()
        host = self._snapshot(tensors)
        on_cuda = [value.device for values in tensors.values() for value in values.values() if value.is_cuda]
        # the non-blocking copies were queued on the device's current stream: they end at this event
        copied = torch.cuda.current_stream(on_cuda[0]).record_event() if on_cuda else None
        folder = self._folder()
        thread = threading.Thread(
            target=self._run, args=(folder, host, copy.deepcopy(state), copied), name="dctdiff-checkpoint", daemon=True
        )
        thread.start()
        self._pending = (thread, folder)

    def ready(self, wait: bool = False) -> str | None:
        """The folder of the newest finished write not handed over yet, or None; ``wait``: until the running
        write ends. An older finished folder that was never handed over is superseded and deleted.
        Raises the error of a failed write."""
        if self._pending is not None and (wait or not self._pending[0].is_alive()):
            self._join()
        folder, self._finished = self._finished, None
        return folder

    def _snapshot(self, tensors: Tensors) -> Tensors:
        """Copies of ``tensors`` in the kept host buffers (made on first use, pinned for CUDA tensors)."""
        host: Tensors = {}
        for group, values in tensors.items():
            buffers = self._buffers.setdefault(group, {})
            for key, value in values.items():
                buffer = buffers.get(key)
                if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                    buffer = buffers[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
                buffer.copy_(value.detach(), non_blocking=value.is_cuda)
            host[group] = {key: buffers[key] for key in values}  # only this state's keys
        return host

    def _run(self, folder: str, host: Tensors, state: dict[str, Any], copied: torch.cuda.Event | None) -> None:
        """The thread: wait for the device copies, then serialise, hash and write."""
        try:
            if copied is not None:
                copied.synchronize()
            self._write(folder, host, state)
        except BaseException as error:  # noqa: BLE001 - raised in the training thread by ready/start
            self._error = error

    def _join(self) -> None:
        """Wait for the running write; its folder becomes the finished one (or its error is raised)."""
        if self._pending is None:
            return
        thread, folder = self._pending
        thread.join()
        self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error  # its partial folder is never handed over (it has no manifest, as after a crash)
        if self._finished is not None:
            log.debug("checkpoint %s superseded by %s before it was reported", self._finished, folder)
            shutil.rmtree(self._finished, ignore_errors=True)
        self._finished = folder
