"""dctdiff.infra.storage (local paths, file:// URIs, an object-store-like filesystem) and dctdiff.data.shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dctdiff.data import shards
from dctdiff.data.shards import CodecParams, read_codec_params, read_shard, write_shard
from dctdiff.infra import storage


def test_local_paths_and_file_uris_are_the_same_place(tmp_path):
    uri = f"file://{tmp_path}/a/b.json"
    storage.write_json(uri, {"x": 1})
    assert storage.read_json(str(tmp_path / "a" / "b.json")) == {"x": 1}
    assert storage.exists(uri) and storage.is_local(uri) and not storage.is_dir(uri)
    assert storage.is_dir(str(tmp_path / "a"))
    assert storage.join("s3://bucket/prefix/", "x", "y.parquet") == "s3://bucket/prefix/x/y.parquet"
    assert storage.normalize(f"file://{tmp_path}") == str(tmp_path)
    with pytest.raises(ValueError, match="URI pyarrow supports"):
        storage.resolve("nosuchscheme://x/y")


def test_check_writable_creates_the_folder_and_leaves_nothing_else(tmp_path):
    storage.check_writable(f"file://{tmp_path}/a/b")
    assert list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"^cannot write to --storage .*file.txt/c \(Not a directory\)"):
        storage.check_writable(str(tmp_path / "file.txt" / "c"), "--storage")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = str(tmp_path / "out.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(target) as (fs, path):
            with fs.open_output_stream(path) as stream:
                stream.write(b"half")
            raise RuntimeError("killed")
    assert not storage.exists(target) and list(tmp_path.iterdir()) == []
    storage.write_bytes(target, b"whole")
    assert storage.read_bytes(target) == b"whole"


def test_remove_temporaries_and_listing(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"12")
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / ".a.png.0123.tmp").write_bytes(b"left by a killed writer")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_bytes(b"")
    files = storage.list_files(str(tmp_path))
    assert [(f.relative, f.size) for f in files] == [("a.png", 1), ("sub/b.png", 2)]
    assert storage.remove_temporaries(str(tmp_path)) == 1
    assert storage.tree_size(str(tmp_path)) == 3
    storage.delete(str(tmp_path / "sub"))
    assert not storage.exists(str(tmp_path / "sub"))


def test_object_store_paths_are_written_in_place(monkeypatch):
    """A non-local pyarrow filesystem (the in-memory mock) takes the same calls without renames."""
    memory = pafs._MockFileSystem()
    real_resolve = storage.resolve

    def resolve(uri: str):
        return (memory, uri.removeprefix("mock://")) if uri.startswith("mock://") else real_resolve(uri)

    monkeypatch.setattr(storage, "resolve", resolve)
    storage.write_json("mock://bucket/run/report.json", {"ok": True})
    assert storage.read_json("mock://bucket/run/report.json") == {"ok": True}
    assert [f.relative for f in storage.list_files("mock://bucket")] == ["run/report.json"]
    params = CodecParams(8, 2)
    coefficients = np.random.default_rng(0).normal(0, 50, (3, *params.shape))
    shard = "mock://bucket/run/coefficients/part-000000.parquet"
    write_shard(shard, ["a", "b", "c"], np.array([0, 1, -1]), coefficients, params)
    assert read_codec_params("mock://bucket/run") == params
    assert shards.shard_files("mock://bucket/run") == [shard]
    assert not storage.is_local("mock://bucket/run") and storage.remove_temporaries("mock://bucket/run") == 0


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_shard_round_trip_schema_and_metadata(tmp_path, dtype):
    params = CodecParams(16, 2, dtype)
    coefficients = np.random.default_rng(1).normal(0, 60, (5, *params.shape))
    uri = str(tmp_path / "coefficients" / "part-000000.parquet")
    size = write_shard(uri, [f"id{i}" for i in range(5)], np.arange(5) - 1, coefficients, params)
    assert size == (tmp_path / "coefficients" / "part-000000.parquet").stat().st_size
    ids, labels, back = read_shard(uri)
    assert ids == [f"id{i}" for i in range(5)] and labels.tolist() == [-1, 0, 1, 2, 3] and labels.dtype == np.int32
    assert back.dtype == np.dtype(dtype) and back.shape == (5, 16, 6, 4)
    np.testing.assert_array_equal(back, coefficients.astype(dtype))
    schema = pq.read_schema(uri)
    assert schema.field("coefficients").type.extension_name == "arrow.fixed_shape_tensor"
    assert json.loads(schema.metadata[b"dctdiff"])["block_size"] == 2
    assert read_codec_params(str(tmp_path)) == params == read_codec_params(uri)


def test_codec_params_validation_says_what_to_change():
    with pytest.raises(ValueError, match="multiple of 2 x block size = 4.*use e.g. 28 or 32"):
        CodecParams(30, 2)
    with pytest.raises(ValueError, match="--dtype must be one of"):
        CodecParams(32, 2, "float64")
    with pytest.raises(ValueError, match=r"block_size 4 \(wanted 2\)"):
        CodecParams(32, 2).check_matches(CodecParams(32, 4), "OUT")
    CodecParams(32, 2).check_matches(CodecParams(32, 2), "OUT")


def test_unrelated_parquet_has_no_codec_metadata(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not written by `dctdiff prepare`"):
        read_codec_params(str(tmp_path / "x.parquet"))
    with pytest.raises(FileNotFoundError, match="run `dctdiff prepare`"):
        read_codec_params(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run `dctdiff prepare`"):
        read_codec_params(str(tmp_path / "empty"))
