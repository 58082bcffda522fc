"""Items of an iterator produced ahead by a background thread, so that the host work of the next batch
(the shard rows gathered, the copy into pinned memory, the id keys, the device copy and token conversion)
overlaps the current GPU training step instead of delaying it (docs/ARCHITECTURE.md, "Training")."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import torch

T = TypeVar("T")

_END = object()  # the producer's last message when the iterator is exhausted
POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Failure:
    """An exception raised by the iterator, carried to the consumer's thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterator[T], depth: int = 2, device: torch.device | None = None) -> Iterator[T]:
    """The items of ``items`` in order, produced up to ``depth`` ahead in a daemon thread.

    An exception of ``items`` is raised here, at the item where it happened. Leaving the loop early (or
    closing this generator) stops the thread at its next item; ``items`` is not consumed further. With a
    CUDA ``device`` the thread makes it its current device first (a new thread starts on GPU 0, where
    pinning and copies would otherwise open a second CUDA context), as PyTorch's pin-memory thread does.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(message: object) -> bool:
        """Put ``message`` unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                ready.put(message, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)
            for item in items:
                if not offer(item):
                    return
        except BaseException as error:  # noqa: BLE001 - every failure belongs to the consumer
            offer(_Failure(error))
            return
        offer(_END)

    thread = threading.Thread(target=produce, name="dctdiff-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            message = ready.get()
            if message is _END:
                return
            if isinstance(message, _Failure):
                raise message.error
            yield message
    finally:
        stop.set()
