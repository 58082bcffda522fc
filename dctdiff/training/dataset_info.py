"""What the trainer needs to know about a prepare output before it starts: where the shards are,
how many rows (and in which row groups, the unit the training reader reads), the codec they were written with (checked against the config), the colour mode, the
column the trainer reads, eta and entropies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dctdiff.data.shards import (
    COEFFICIENT_COLUMN,
    COEFFICIENT_DIR,
    PIXEL_COLUMN,
    CodecParams,
    read_codec_params,
    row_group_rows,
    shard_files,
)  # fmt: skip
from dctdiff.data.statistics import load_stats
from dctdiff.infra import storage
from dctdiff.models.config import TrainConfig


@dataclass(frozen=True)
class DatasetInfo:
    """A checked prepare output: shard folder URI, row count, codec, colour mode and eta used, the column
    the trainer reads, entropies, stats.json; the shard files (sorted) and the row count of each of their
    row groups, from which ``training.batch_order`` plans every epoch."""

    shards_uri: str
    rows: int
    row_bytes: int
    resolution: int
    block_size: int
    eta: float
    colour: str
    column: str
    entropy: dict[str, list[float]]
    stats: dict[str, Any]
    shard_files: tuple[str, ...] = ()
    row_groups: tuple[tuple[int, ...], ...] = ()  # per shard file: the rows of each of its row groups


def _colour(where: str, params: CodecParams, config: TrainConfig) -> str:
    """The colour mode to train: the shards' (data.colour, when set, must agree)."""
    wanted = config.colour
    if wanted is not None and wanted != params.colour:
        raise ValueError(
            f"{where} was prepared with --colour {params.colour}, but the config wants data.colour="
            f"{wanted}: set data.colour=auto or prepare the data again with --colour {wanted}"
        )
    return params.colour


def _token_column(where: str, params: CodecParams, config: TrainConfig) -> str:
    """The shard column the trainer reads: the coefficients, or the source pixels for data.space=pixel."""
    if config.data.space != "pixel":
        return COEFFICIENT_COLUMN
    if not params.pixels:
        raise ValueError(f"{where} has no {PIXEL_COLUMN} column for data.space=pixel: prepare with --store-pixels")
    return PIXEL_COLUMN


def load_dataset_info(
    data_uri: str, config: TrainConfig, flag: str = "--data", reads_tokens: bool = True
) -> DatasetInfo:
    """Open and check a prepare output for ``config`` (``flag``: the option that named it, for the errors).

    Raises FileNotFoundError for a missing or empty folder and ValueError when the shards were
    written with another resolution, block size or colour mode than the config asks for, or (with
    ``reads_tokens``) lack the pixels a data.space=pixel run reads. A FID reference passes
    ``reads_tokens=False``: FID decodes its coefficients whatever data.space is, so it needs no pixels.
    """
    where = f"{flag} {data_uri}"
    storage.require_exists(data_uri, flag, "run `dctdiff prepare` to make it")
    files = shard_files(storage.normalize(data_uri))  # absolute: Ray Train workers run in another folder
    if not files:
        raise FileNotFoundError(
            f"{where} has no {COEFFICIENT_DIR}/*.parquet shards: run `dctdiff prepare` "
            f"--output {data_uri} first (or finish it: re-running the same command resumes)"
        )
    params = read_codec_params(data_uri)
    d = config.data
    if (params.resolution, params.block_size) != (d.resolution, d.block_size):
        raise ValueError(
            f"{where} holds {params.resolution}x{params.resolution} images with block size "
            f"{params.block_size}, but the config wants data.resolution={d.resolution}, data.block_size="
            f"{d.block_size}: choose the matching preset, --set data.resolution=... data.block_size=..., "
            "or prepare the data again with these settings"
        )
    colour = _colour(where, params, config)
    column = _token_column(where, params, config) if reads_tokens else COEFFICIENT_COLUMN
    stats = load_stats(data_uri)
    row_groups = tuple(row_group_rows(uri) for uri in files)
    rows = sum(map(sum, row_groups))
    if rows == 0:
        raise FileNotFoundError(f"{where} has shards but no rows: every input image was rejected")
    if d.class_conditional:
        _check_labels(where, files, d.num_classes)
    return DatasetInfo(
        shards_uri=storage.join(storage.normalize(data_uri), COEFFICIENT_DIR),
        rows=rows,
        row_bytes=params.row_bytes,
        resolution=params.resolution,
        block_size=params.block_size,
        eta=d.eta if d.eta is not None else stats.eta,
        colour=colour,
        column=column,
        entropy=stats.entropy,
        stats=stats.to_json(),
        shard_files=tuple(files),
        row_groups=row_groups,
    )


def _check_labels(where: str, files: list[str], num_classes: int) -> None:
    """Every label in 0..num_classes-1, else ValueError: the label embedding would raise at step 1 on every
    rank (an unlabelled image's label is -1). Reads only the shards' label column."""
    import numpy as np
    import pyarrow.parquet as pq

    labels = np.concatenate([
        pq.read_table(path, columns=["label"], filesystem=fs).column("label").to_numpy()
        for fs, path in (storage.resolve(uri) for uri in files)
    ])  # fmt: skip
    if labels.min() < 0:
        raise ValueError(
            f"{where} has unlabelled images (label -1), but data.class_conditional is on: train "
            "without it or prepare a labelled source"
        )
    if labels.max() >= num_classes:
        raise ValueError(
            f"{where} has labels up to {labels.max()}, but data.num_classes={num_classes}: set "
            f"data.num_classes={labels.max() + 1}"
        )
