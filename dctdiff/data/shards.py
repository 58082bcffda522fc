"""Parquet shards of DCT coefficients (docs/ARCHITECTURE.md, "Shards").

One row per image: ``id`` (string, stable source identifier), ``label`` (int32, -1 when unlabeled),
``coefficients`` (Arrow canonical fixed-shape tensor [L, 6, B*B], float16 or float32, unscaled,
zigzag order; Ray Data reads it as a tensor column). The codec parameters live in the file's
key-value metadata under ``dctdiff``, so a reader can check them before training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dctdiff.core.token_layout import TokenLayout, check_token_resolution
from dctdiff.infra import storage

SHARD_FORMAT = "dctdiff-coefficients"
SHARD_VERSION = 1
METADATA_KEY = b"dctdiff"
COEFFICIENT_DIR = "coefficients"
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
# Token layout of docs/ARCHITECTURE.md, "Codec": blocks Y(2r,2c), Y(2r,2c+1), Y(2r+1,2c), Y(2r+1,2c+1), Cb(r,c), Cr(r,c).
LAYOUT = "YCbCr 4:2:0 (JPEG full range); blocks Y00 Y01 Y10 Y11 Cb Cr; zigzag order; unscaled"


@dataclass(frozen=True)
class CodecParams:
    """The codec settings a shard was written with; equal params mean interchangeable shards."""

    resolution: int
    block_size: int
    dtype: str = "float16"
    layout: str = LAYOUT
    format: str = SHARD_FORMAT
    version: int = SHARD_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_token_resolution(self.resolution, self.resolution, self.block_size)

    @property
    def num_tokens(self) -> int:
        """L = (R / 2B)^2."""
        return (self.resolution // (2 * self.block_size)) ** 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-row tensor shape [L, 6, B*B]: every frequency of every block of a token."""
        return (self.num_tokens, TokenLayout(self.block_size**2).blocks_per_token, self.block_size**2)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's coefficients."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in shard metadata, prepare.json and stats.json (plus num_tokens)."""
        return {**asdict(self), "num_tokens": self.num_tokens}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "CodecParams":
        """Inverse of :meth:`to_dict` (derived keys such as num_tokens are ignored)."""
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


def schema(params: CodecParams) -> pa.Schema:
    """The Arrow schema of a shard, codec parameters in its metadata."""
    tensor = pa.fixed_shape_tensor(DTYPES[params.dtype], params.shape)
    return pa.schema(
        [("id", pa.string()), ("label", pa.int32()), ("coefficients", tensor)],
        metadata={METADATA_KEY: json.dumps(params.to_dict()).encode()},
    )


def shard_table(ids: list[str], labels: np.ndarray, coefficients: np.ndarray, params: CodecParams) -> pa.Table:
    """Rows -> an Arrow table; coefficients [N, L, 6, B*B] are cast to ``params.dtype``."""
    coefficients = np.ascontiguousarray(coefficients, dtype=params.dtype)
    if coefficients.shape[1:] != params.shape or len(coefficients) != len(ids) or len(labels) != len(ids):
        raise ValueError(
            f"{len(ids)} ids, {len(labels)} labels and coefficients {list(coefficients.shape)} do not make "
            f"rows of shape [N, {', '.join(map(str, params.shape))}]"
        )
    tensor_type = pa.fixed_shape_tensor(DTYPES[params.dtype], params.shape)
    dtype = DTYPES[params.dtype]
    values = pa.Array.from_buffers(dtype, coefficients.size, [None, pa.py_buffer(coefficients)])  # zero-copy
    storage_array = pa.FixedSizeListArray.from_arrays(values, int(np.prod(params.shape)))
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(np.asarray(labels, np.int32), pa.int32()),
         pa.ExtensionArray.from_storage(tensor_type, storage_array)],
        schema=schema(params),
    )


def write_shard(
    uri: str, ids: list[str], labels: np.ndarray, coefficients: np.ndarray, params: CodecParams
) -> int:
    """Write one shard atomically (storage.atomic_path); returns the file size in bytes."""
    table = shard_table(ids, labels, coefficients, params)
    with storage.atomic_path(uri) as (fs, path):
        # Unique ids and float values gain nothing from dictionaries or min/max statistics.
        pq.write_table(table, path, filesystem=fs, use_dictionary=False, write_statistics=["id", "label"])
        size = fs.get_file_info(path).size
    return int(size)


def read_shard(uri: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, labels int32 [N], coefficients [N, L, 6, B*B] in the stored dtype) of one shard."""
    fs, path = storage.resolve(uri)
    table = pq.read_table(path, filesystem=fs)
    column = table.column("coefficients").combine_chunks()
    return table.column("id").to_pylist(), table.column("label").to_numpy(), column.to_numpy_ndarray()


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
