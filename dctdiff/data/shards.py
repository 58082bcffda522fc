"""Parquet shards of DCT coefficients (docs/ARCHITECTURE.md, "Shards").

One row per image: ``id`` (string, stable source identifier), ``label`` (int32, -1 when unlabeled),
``coefficients`` (Arrow canonical fixed-shape tensor [L, blocks, B*B], float16 or float32, unscaled,
zigzag order; Ray Data reads it as a tensor column; blocks = 6 for ycbcr420, 4 for grey) and, with
``prepare --store-pixels``, ``pixels`` (uint8 fixed-shape tensor [R, R, C], C = 3, grey 1: the source
image the coefficients were computed from). The codec parameters live in the file's key-value
metadata under ``dctdiff``, so a reader can check them before training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dctdiff.core.codec import colour_channels
from dctdiff.core.token_layout import COLOUR_MODES, DEFAULT_COLOUR, TokenLayout, check_colour, check_token_resolution
from dctdiff.infra import storage

SHARD_FORMAT = "dctdiff-coefficients"
SHARD_VERSION = 1
METADATA_KEY = b"dctdiff"
COEFFICIENT_DIR = "coefficients"
COEFFICIENT_COLUMN = "coefficients"
PIXEL_COLUMN = "pixels"
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
# Rows per Parquet row group: the unit a training reader reads (docs/ARCHITECTURE.md, "Training data order").
# Shards written before this rule hold one group each and still train, with coarser shuffle windows.
ROW_GROUP_ROWS = 256
# Token layout of docs/ARCHITECTURE.md, "Codec": blocks Y(2r,2c), Y(2r,2c+1), Y(2r+1,2c), Y(2r+1,2c+1)[, Cb(r,c), Cr(r,c)].
LAYOUTS = {
    "ycbcr420": "YCbCr 4:2:0 (JPEG full range); blocks Y00 Y01 Y10 Y11 Cb Cr; zigzag order; unscaled",
    "grey": "Y only (JPEG full-range luma); blocks Y00 Y01 Y10 Y11; zigzag order; unscaled",
}
assert set(LAYOUTS) == set(COLOUR_MODES)


@dataclass(frozen=True)
class CodecParams:
    """The codec settings a shard was written with; equal params mean interchangeable shards."""

    resolution: int
    block_size: int
    dtype: str = "float16"
    colour: str = DEFAULT_COLOUR  # shards written before the field existed are ycbcr420
    pixels: bool = False  # whether rows also hold the source pixels (``prepare --store-pixels``)
    format: str = SHARD_FORMAT
    version: int = SHARD_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_colour(self.colour)
        check_token_resolution(self.resolution, self.resolution, self.block_size)

    @property
    def token_layout(self) -> TokenLayout:
        """The layout of a token with every frequency kept."""
        return TokenLayout.for_colour(self.colour, self.block_size**2)

    @property
    def layout(self) -> str:
        """A text description of the block order (stored for people reading the metadata)."""
        return LAYOUTS[self.colour]

    @property
    def num_tokens(self) -> int:
        """L = (R / 2B)^2."""
        return (self.resolution // (2 * self.block_size)) ** 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-row tensor shape [L, blocks, B*B]: every frequency of every block of a token."""
        return (self.num_tokens, self.token_layout.blocks_per_token, self.block_size**2)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """Per-row shape of the ``pixels`` column [R, R, C]: C = 1 for grey, else 3."""
        return (self.resolution, self.resolution, colour_channels(self.colour))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's coefficients (and pixels, when stored)."""
        pixel_bytes = int(np.prod(self.pixel_shape)) if self.pixels else 0
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize + pixel_bytes

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in shard metadata, prepare.json and stats.json (plus layout, num_tokens)."""
        return {**asdict(self), "layout": self.layout, "num_tokens": self.num_tokens}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "CodecParams":
        """Inverse of :meth:`to_dict` (derived keys such as layout and num_tokens are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in document.items() if k in names})

    def check_matches(self, found: "CodecParams", where: str, fix: str = "") -> None:
        """Raise a ValueError saying what differs (and ``fix``) when ``found``, read from ``where``, is
        not these params."""
        if found == self:
            return
        differences = ", ".join(
            f"{name} {getattr(found, name)!r} (wanted {getattr(self, name)!r})"
            for name in self.__dataclass_fields__
            if getattr(found, name) != getattr(self, name)
        )
        raise ValueError(f"{where} holds coefficients with different codec parameters: {differences}{fix}")


def _tensor_columns(params: CodecParams) -> dict[str, tuple[pa.DataType, tuple[int, ...]]]:
    """Tensor column name -> (value type, per-row shape) of a shard."""
    columns = {COEFFICIENT_COLUMN: (DTYPES[params.dtype], params.shape)}
    if params.pixels:
        columns[PIXEL_COLUMN] = (pa.uint8(), params.pixel_shape)
    return columns


def schema(params: CodecParams) -> pa.Schema:
    """The Arrow schema of a shard, codec parameters in its metadata."""
    tensors = [(name, pa.fixed_shape_tensor(t, shape)) for name, (t, shape) in _tensor_columns(params).items()]
    return pa.schema(
        [("id", pa.string()), ("label", pa.int32()), *tensors],
        metadata={METADATA_KEY: json.dumps(params.to_dict()).encode()},
    )


def _tensor_array(values: np.ndarray, value_type: pa.DataType, shape: tuple[int, ...]) -> pa.ExtensionArray:
    """Rows [N, *shape] (already of the column's dtype, contiguous) -> a fixed-shape tensor array (zero-copy)."""
    flat = pa.Array.from_buffers(value_type, values.size, [None, pa.py_buffer(values)])
    storage_array = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape)))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, shape), storage_array)


def shard_table(
    ids: list[str], labels: np.ndarray, coefficients: np.ndarray, params: CodecParams, pixels: np.ndarray | None = None
) -> pa.Table:
    """Rows -> an Arrow table; coefficients [N, L, blocks, B*B] are cast to ``params.dtype``; pixels
    uint8 [N, R, R, C] are required exactly when ``params.pixels``."""
    rows = {COEFFICIENT_COLUMN: np.ascontiguousarray(coefficients, dtype=params.dtype)}
    if params.pixels != (pixels is not None):
        raise ValueError(f"CodecParams.pixels is {params.pixels} but pixels were {'not ' * (pixels is None)}given")
    if pixels is not None:
        rows[PIXEL_COLUMN] = np.ascontiguousarray(pixels, dtype=np.uint8)
    columns = _tensor_columns(params)
    for name, values in rows.items():
        shape = columns[name][1]
        if values.shape[1:] != shape or len(values) != len(ids) or len(labels) != len(ids):
            raise ValueError(
                f"{len(ids)} ids, {len(labels)} labels and {name} {list(values.shape)} do not make "
                f"rows of shape [N, {', '.join(map(str, shape))}]"
            )
    tensors = [_tensor_array(rows[name], value_type, shape) for name, (value_type, shape) in columns.items()]
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(np.asarray(labels, np.int32), pa.int32()), *tensors],
        schema=schema(params),
    )


def write_shard(
    uri: str,
    ids: list[str],
    labels: np.ndarray,
    coefficients: np.ndarray,
    params: CodecParams,
    pixels: np.ndarray | None = None,
) -> int:
    """Write one shard atomically (storage.atomic_path); returns the file size in bytes."""
    table = shard_table(ids, labels, coefficients, params, pixels)
    with storage.atomic_path(uri) as (fs, path):
        # Unique ids and float values gain nothing from dictionaries or min/max statistics.
        pq.write_table(
            table, path, filesystem=fs, use_dictionary=False, write_statistics=["id", "label"],
            row_group_size=ROW_GROUP_ROWS,
        )  # fmt: skip
        size = fs.get_file_info(path).size
    return int(size)


def table_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """The columns of shard rows as NumPy arrays: ``id`` fixed-width str [N], ``label`` int32 [N], each
    tensor column [N, *shape] in its stored dtype."""
    arrays = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "id":
            arrays[name] = column.to_numpy().astype(str)
        elif name == "label":
            arrays[name] = column.to_numpy().astype(np.int32, copy=False)
        else:
            arrays[name] = column.combine_chunks().to_numpy_ndarray()
    return arrays


def read_shard(uri: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, labels int32 [N], coefficients [N, L, blocks, B*B] in the stored dtype) of one shard."""
    fs, path = storage.resolve(uri)
    rows = table_arrays(pq.read_table(path, filesystem=fs, columns=["id", "label", COEFFICIENT_COLUMN]))
    return rows["id"].tolist(), rows["label"], rows[COEFFICIENT_COLUMN]


def row_group_rows(uri: str) -> tuple[int, ...]:
    """The row count of each row group of one shard, from its footer (no data read)."""
    fs, path = storage.resolve(uri)
    metadata = pq.read_metadata(path, filesystem=fs)
    return tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))


def read_row_groups(uri: str, groups: list[int], columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` of the given row groups of one shard, in the order given (``table_arrays``' types)."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as file:
        return table_arrays(pq.ParquetFile(file).read_row_groups(groups, columns=columns))


def read_pixels(uri: str) -> np.ndarray:
    """The ``pixels`` column of one shard: uint8 [N, R, R, C] (a KeyError names the fix when absent)."""
    fs, path = storage.resolve(uri)
    if PIXEL_COLUMN not in pq.read_schema(path, filesystem=fs).names:
        raise KeyError(f"{uri} has no {PIXEL_COLUMN} column: prepare with --store-pixels")
    column = pq.read_table(path, filesystem=fs, columns=[PIXEL_COLUMN]).column(PIXEL_COLUMN).combine_chunks()
    return column.to_numpy_ndarray()


def read_codec_params(uri: str) -> CodecParams:
    """Codec parameters from a shard's metadata, or from the first shard of a prepare output folder."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"no shards at {uri}: run `dctdiff prepare` first")
    if storage.is_dir(uri):
        files = shard_files(uri) or shard_files(uri, subfolder="")
        if not files:
            raise FileNotFoundError(f"no Parquet shards in {uri}: run `dctdiff prepare` first")
        uri = files[0]
    fs, path = storage.resolve(uri)
    metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{uri} has no dctdiff codec metadata: it was not written by `dctdiff prepare`")
    return CodecParams.from_dict(json.loads(metadata[METADATA_KEY]))


def shard_files(output_uri: str, subfolder: str = COEFFICIENT_DIR) -> list[str]:
    """URIs of the shards in a prepare output folder (``coefficients/*.parquet``), sorted."""
    folder = storage.join(output_uri, subfolder) if subfolder else output_uri
    if not storage.is_dir(folder):
        return []
    return [
        storage.join(folder, e.relative)
        for e in storage.list_files(folder, recursive=False)
        if e.relative.endswith(".parquet")
    ]
