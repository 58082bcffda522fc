"""Shard rows read by Parquet row group: the table of a prepare output's row groups and a reader that
loads a shuffle window (a set of row groups) into NumPy arrays, one window ahead in a background thread
(docs/ARCHITECTURE.md, "Training data order")."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dctdiff.data.shards import read_row_groups


@dataclass(frozen=True)
class RowGroups:
    """The row groups of a prepare output in canonical order (shard files sorted, groups in file order);
    global row r is row r - first[c] of group c."""

    shard: np.ndarray  # int64 [C]: index of the group's shard file
    group: np.ndarray  # int64 [C]: index of the group inside its file
    rows: np.ndarray  # int64 [C]: rows of the group
    first: np.ndarray  # int64 [C]: global index of the group's first row

    @classmethod
    def from_counts(cls, counts: Sequence[Sequence[int]]) -> "RowGroups":
        """From the row count of each row group of each shard (``DatasetInfo.row_groups``); empty groups dropped."""
        shard, group, rows = [], [], []
        for s, groups in enumerate(counts):
            for g, n in enumerate(groups):
                if n:
                    shard.append(s), group.append(g), rows.append(n)
        rows_array = np.asarray(rows, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(rows_array)[:-1]]).astype(np.int64)
        return cls(np.asarray(shard, np.int64), np.asarray(group, np.int64), rows_array, first)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    def global_rows(self, chunks: np.ndarray) -> np.ndarray:
        """The global rows of ``chunks`` (sorted group indices), group after group: int64 [sum of their rows]."""
        sizes = self.rows[chunks]
        offsets = np.repeat(self.first[chunks] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return np.arange(int(sizes.sum()), dtype=np.int64) + offsets


class WindowReader:
    """Loads the rows of a window (sorted row-group indices) as NumPy arrays, group after group, keeping the
    window last asked for and the one announced by ``read_ahead``; a window asked for again (every epoch of
    a dataset that is one window) is not read again.

    ``read_windows`` lists the windows read from storage, in order (a resume reads no earlier window).
    """

    def __init__(self, files: Sequence[str], groups: RowGroups, columns: Sequence[str]) -> None:
        self.files, self.groups, self.columns = list(files), groups, list(columns)
        self.read_windows: list[tuple[int, ...]] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dctdiff-window")
        self._loaded: dict[tuple[int, ...], Future] = {}
        self._kept: set[tuple[int, ...]] = set()

    def _read(self, chunks: tuple[int, ...]) -> dict[str, np.ndarray]:
        parts = []
        chunk_array = np.asarray(chunks, dtype=np.int64)
        for shard in np.unique(self.groups.shard[chunk_array]):  # ascending, as the groups are sorted
            in_shard = chunk_array[self.groups.shard[chunk_array] == shard]
            parts.append(read_row_groups(self.files[shard], self.groups.group[in_shard].tolist(), self.columns))
        with self._lock:
            self.read_windows.append(chunks)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.columns}

    def _future(self, chunks: tuple[int, ...]) -> Future:
        if chunks not in self._loaded:
            self._loaded[chunks] = self._pool.submit(self._read, chunks)
        return self._loaded[chunks]

    def read_ahead(self, chunks: np.ndarray) -> None:
        """Start reading a window the caller will ask for next, in the background."""
        key = tuple(chunks.tolist())
        self._kept.add(key)
        self._future(key)

    def window(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """The window's rows (waits for a read ahead); windows neither this one nor read ahead are dropped."""
        key = tuple(chunks.tolist())
        arrays = self._future(key).result()
        self._kept.discard(key)
        self._loaded = {k: f for k, f in self._loaded.items() if k == key or k in self._kept}
        return arrays

    def close(self) -> None:
        """Stop the background thread (a read under way finishes first)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
