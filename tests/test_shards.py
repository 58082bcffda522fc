"""Shard schema and metadata: colour modes, the optional pixels column, and shards written before the colour
field existed (docs/ARCHITECTURE.md, "Shards")."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dctdiff.data.shards import CodecParams, read_codec_params, read_pixels, read_shard, schema, write_shard


def rows(params: CodecParams, n: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    coefficients = np.random.default_rng(seed).normal(size=(n, *params.shape)).astype(params.dtype)
    return [f"img-{i}" for i in range(n)], np.arange(n, dtype=np.int32), coefficients


def test_grey_shards_hold_four_blocks_and_round_trip_their_metadata(tmp_path):
    params = CodecParams(16, 2, colour="grey")
    assert params.shape == (16, 4, 4) and "Y only" in params.layout
    ids, labels, coefficients = rows(params)
    write_shard(str(tmp_path / "part.parquet"), ids, labels, coefficients, params)
    assert read_codec_params(str(tmp_path / "part.parquet")) == params
    read_ids, read_labels, read_coefficients = read_shard(str(tmp_path / "part.parquet"))
    assert read_ids == ids and read_labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(read_coefficients, coefficients)
    assert CodecParams.from_dict(params.to_dict()) == params
    with pytest.raises(KeyError, match="prepare with --store-pixels"):
        read_pixels(str(tmp_path / "part.parquet"))


@pytest.mark.parametrize("colour, channels", [("ycbcr420", 3), ("grey", 1)])
def test_pixels_column_beside_the_coefficients(tmp_path, colour, channels):
    params = CodecParams(8, 2, colour=colour, pixels=True)
    ids, labels, coefficients = rows(params)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8, channels), dtype=np.uint8)
    write_shard(str(tmp_path / "part.parquet"), ids, labels, coefficients, params, pixels)
    file_schema = pq.read_schema(tmp_path / "part.parquet")
    assert file_schema.names == ["id", "label", "coefficients", "pixels"]
    assert file_schema.field("pixels").type == pa.fixed_shape_tensor(pa.uint8(), [8, 8, channels])
    np.testing.assert_array_equal(read_pixels(str(tmp_path / "part.parquet")), pixels)
    assert read_codec_params(str(tmp_path / "part.parquet")) == params
    assert params.row_bytes == np.prod(params.shape) * 2 + 8 * 8 * channels  # float16 coefficients + uint8 pixels
    with pytest.raises(ValueError, match="pixels were not given"):
        write_shard(str(tmp_path / "other.parquet"), ids, labels, coefficients, params)


def test_shards_without_a_colour_field_read_as_ycbcr420(tmp_path):
    params = CodecParams(8, 2)
    old = {k: v for k, v in params.to_dict().items() if k not in ("colour", "pixels")}  # a version-1 shard of before
    ids, labels, coefficients = rows(params)
    write_shard(str(tmp_path / "part.parquet"), ids, labels, coefficients, params)
    table = pq.read_table(tmp_path / "part.parquet")
    table = table.replace_schema_metadata({b"dctdiff": json.dumps(old).encode()})
    pq.write_table(table, tmp_path / "old.parquet")
    assert read_codec_params(str(tmp_path / "old.parquet")) == params
    assert params.colour == "ycbcr420" and schema(params).names == ["id", "label", "coefficients"]
    with pytest.raises(ValueError, match="colour must be one of"):
        CodecParams(8, 2, colour="rgb")
