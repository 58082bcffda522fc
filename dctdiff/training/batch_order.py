"""The order in which training visits the rows: a fresh pseudo-random permutation of the whole dataset
every epoch, a pure function of (seed, epoch) and of the data's row groups, never of the worker count
(docs/ARCHITECTURE.md, "Training data order").

Epoch e: the row groups are permuted (``permutation(groups, seed, e, 0)``) and cut, in that order, into
shuffle windows of at least ``window_rows`` rows; the rows of window w are permuted
(``permutation(rows of w, seed, e, w + 1)``); the epoch is the windows one after the other. A dataset
that fits one window (every dataset up to ``MATERIALIZE_BYTES``) is thus one uniform permutation of all
its rows, read once; a larger one is read window by window, a window ahead. Global batch b of the epoch
is positions [b B, (b + 1) B) of that order (the last N mod B positions are not trained that epoch), and
worker r of W takes positions [b B + r B/W, b B + (r + 1) B/W) of it: the global batches are the same for
any W, and a resumed run starts at its step's batch without reading an earlier window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dctdiff.core.counter_rng import MIX1, salted, stream_bits
from dctdiff.data.row_group_reader import RowGroups, WindowReader
from dctdiff.training.dataset_info import DatasetInfo

MATERIALIZE_BYTES = 512 * 2**20  # a dataset up to this size is one window: read once, kept for every epoch
WINDOW_BYTES = 256 * 2**20  # a larger dataset is read in shuffle windows of about this size (two in memory)


def permutation(n: int, *salts: int) -> np.ndarray:
    """A pseudo-random permutation of range(n), a pure function of (n, salts): int64 [n].

    Counter-based like the training stream (``dctdiff.core.counter_rng``): SplitMix64 of
    (key + (i + 1) * GOLDEN) for every i, with the key folded from the salts; argsort of those 64-bit values (a tie would take the
    lower index first, so the result is defined everywhere). Independent of NumPy's generators.
    """
    key = torch.zeros(1, dtype=torch.int64)
    for salt in salts:
        key = salted(key, salt + 1, MIX1)
    bits = stream_bits(key[:, None], torch.arange(n, dtype=torch.int64))[0]  # [n]
    return torch.argsort(bits, stable=True).numpy()


def window_rows(info: DatasetInfo) -> int:
    """Rows per shuffle window: the whole dataset up to MATERIALIZE_BYTES, else about WINDOW_BYTES of rows."""
    if info.rows * info.row_bytes <= MATERIALIZE_BYTES:
        return info.rows
    return max(1, WINDOW_BYTES // info.row_bytes)


@dataclass(frozen=True)
class EpochOrder:
    """One epoch's order: position p holds global row ``rows[p]``, which is row ``local[p]`` of window
    ``window_of[p]``'s rows (its row groups in canonical order, group after group)."""

    windows: tuple[np.ndarray, ...]  # sorted row-group indices of each window
    window_of: np.ndarray  # int64 [N]
    local: np.ndarray  # int64 [N]
    rows: np.ndarray  # int64 [N]


def epoch_order(groups: RowGroups, seed: int, epoch: int, rows_per_window: int) -> EpochOrder:
    """The order of epoch ``epoch`` (see the module docstring)."""
    shuffled = permutation(len(groups), seed, epoch, 0)  # [C]
    ends = np.cumsum(groups.rows[shuffled])
    windows, start, taken = [], 0, 0
    for end_index in range(len(shuffled)):  # cut the shuffled groups into windows of >= rows_per_window rows
        if ends[end_index] - taken >= rows_per_window or end_index == len(shuffled) - 1:
            windows.append(np.sort(shuffled[start : end_index + 1]))
            start, taken = end_index + 1, int(ends[end_index])
    window_of, local, rows = [], [], []
    for w, chunks in enumerate(windows):
        members = groups.global_rows(chunks)  # [n_w], canonical order
        order = permutation(len(members), seed, epoch, w + 1)  # [n_w]
        window_of.append(np.full(len(members), w, dtype=np.int64))
        local.append(order)
        rows.append(members[order])
    return EpochOrder(tuple(windows), np.concatenate(window_of), np.concatenate(local), np.concatenate(rows))


def take(order: EpochOrder, reader: WindowReader, start: int, stop: int) -> dict[str, np.ndarray]:
    """The rows at positions [start, stop) of the epoch, as arrays in position order (one or two windows)."""
    window_of, local = order.window_of[start:stop], order.local[start:stop]
    first = int(window_of[0])
    if window_of[-1] == first:
        return {name: values[local] for name, values in reader.window(order.windows[first]).items()}
    out: dict[str, np.ndarray] = {}
    for w in np.unique(window_of):  # a batch across a window boundary
        here = window_of == w
        for name, values in reader.window(order.windows[int(w)]).items():
            if name not in out:
                out[name] = np.empty((stop - start, *values.shape[1:]), dtype=values.dtype)
            out[name][here] = values[local[here]]
    return out


@dataclass(frozen=True)
class BatchPlan:
    """How a run cuts its epochs into global batches and the batches into worker shares."""

    groups: RowGroups
    seed: int
    batch_size: int  # the global batch B
    rows_per_window: int

    @classmethod
    def for_run(cls, info: DatasetInfo, seed: int, batch_size: int) -> "BatchPlan":
        return cls(RowGroups.from_counts(info.row_groups), seed, batch_size, window_rows(info))

    @property
    def steps_per_epoch(self) -> int:
        return self.groups.total_rows // self.batch_size

    def order(self, epoch: int) -> EpochOrder:
        return epoch_order(self.groups, self.seed, epoch, self.rows_per_window)


def worker_batches(
    plan: BatchPlan, reader: WindowReader, start_step: int, rank: int = 0, world: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Worker ``rank``'s share of every global batch from step ``start_step`` on (endless, epoch after
    epoch): arrays of the reader's columns, [B / world, ...] each. What ``dctdiff train --show-batches``
    prints (rank 0 of 1 worker) is exactly what the training loop trains on.

    On entering a window it has the reader read the next one (the next epoch's first, from the last) in
    the background."""
    share = plan.batch_size // world
    epoch, batch = divmod(start_step, plan.steps_per_epoch)
    order = plan.order(epoch)
    while True:
        following = None  # the next epoch's order, made once its first window is read ahead
        current = -1
        for b in range(batch, plan.steps_per_epoch):
            start = b * plan.batch_size + rank * share
            window = int(order.window_of[start])
            if window != current:  # this window first, then the next (the reader reads in that order)
                current = window
                reader.read_ahead(order.windows[window])
                if window + 1 < len(order.windows):
                    reader.read_ahead(order.windows[window + 1])
                else:
                    following = plan.order(epoch + 1)
                    reader.read_ahead(following.windows[0])
            yield take(order, reader, start, start + share)
        epoch, batch = epoch + 1, 0
        order = following if following is not None else plan.order(epoch)


def first_batch_ids(info: DatasetInfo, seed: int, batch_size: int, count: int) -> list[np.ndarray]:
    """The ids of the first ``count`` global batches of epoch 0, exactly as training draws them."""
    plan = BatchPlan.for_run(info, seed, batch_size)
    reader = WindowReader(info.shard_files, plan.groups, ["id"])
    try:
        batches = worker_batches(plan, reader, 0)
        return [next(batches)["id"] for _ in range(min(count, plan.steps_per_epoch))]
    finally:
        reader.close()
