"""Faults in the input (issue #16): symlink loops, self links, hidden files, duplicate content, an output
folder inside the source, and truncated IDX / CIFAR-10 files. Expectations are counted from what the
tests write, never from the lister under test."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dctdiff.commands.prepare_command import build_parser, config_from_args, main
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.sources import CIFAR10_RECORD, Cifar10Source, FolderSource, open_source
from dctdiff.evaluation.image_sets import open_image_set
from tests.prepare_data import cifar10_records, encode
from tests.test_prepare import read_rows


def write_pngs(root: Path, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """One distinct 32 x 32 photo crop per name (PNG); returns name -> pixels."""
    written = {}
    for name, crop in zip(names, photo_crops(len(names), 32, seed=seed)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(Image.fromarray(crop), "PNG"))
        written[name] = crop
    return written


def reasons(skipped) -> dict[str, str]:
    return {entry.relative: entry.reason for entry in skipped}


# Folder listing --------------------------------------------------------------------------------------


def test_a_symlink_loop_gives_each_image_once_and_is_reported(tmp_path):
    images = write_pngs(tmp_path, ["a/1.png", "a/2.png", "loopdir/3.png", "top.png"])
    os.symlink("..", tmp_path / "loopdir" / "up")
    os.symlink("../a", tmp_path / "loopdir" / "again")  # the same real folder as a/
    source = FolderSource(str(tmp_path))
    assert [item.id for item in source.items()] == sorted(images)
    assert reasons(source.skipped()) == {"loopdir/up": "symlink loop", "loopdir/again": "already listed"}
    # evaluate lists folders with the same lister: every image once.
    np.testing.assert_array_equal(open_image_set(str(tmp_path)).load(), np.stack([images[k] for k in sorted(images)]))


def test_self_links_dangling_links_and_hidden_files_are_counted(tmp_path):
    images = write_pngs(tmp_path, ["cats/1.png", "dogs/2.png"])
    os.symlink("self", tmp_path / "cats" / "self")
    os.symlink("missing.png", tmp_path / "dogs" / "gone.png")
    (tmp_path / "dogs" / ".hidden.png").write_bytes((tmp_path / "dogs" / "2.png").read_bytes())
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.png").write_bytes(b"not listed")
    source = FolderSource(str(tmp_path))
    assert [item.id for item in source.items()] == sorted(images)
    assert source.class_names() == ["cats", "dogs"]
    assert reasons(source.skipped()) == {
        ".git": "hidden",
        "cats/self": "symlink loop",
        "dogs/.hidden.png": "hidden",
        "dogs/gone.png": "dangling link",
    }


def test_duplicate_content_is_reported_and_dedupe_keeps_the_first(tmp_path):
    images = write_pngs(tmp_path, ["b.png", "c.png", "d.png"])
    (tmp_path / "a.png").write_bytes((tmp_path / "c.png").read_bytes())
    (tmp_path / "e.png").write_bytes((tmp_path / "c.png").read_bytes())
    os.symlink("b.png", tmp_path / "link.png")  # the same file under a second name
    plain = FolderSource(str(tmp_path))
    assert len(plain.items()) == 6 and plain.skipped() == []
    deduped = FolderSource(str(tmp_path), dedupe=True)
    assert [item.id for item in deduped.items()] == ["a.png", "b.png", "d.png"]
    assert reasons(deduped.skipped()) == {"c.png": "duplicate", "e.png": "duplicate", "link.png": "duplicate"}
    loaded = {x.id: np.asarray(Image.open(io.BytesIO(x.payload))) for x in deduped.load(deduped.items())}
    for kept, name in (("a.png", "c.png"), ("b.png", "b.png"), ("d.png", "d.png")):
        np.testing.assert_array_equal(loaded[kept], images[name])


def test_dedupe_flag_and_its_scope():
    parser = build_parser()
    args = parser.parse_args(["--source", "folder:/x", "--output", "/o", "--preset", "cifar10", "--dedupe"])
    assert config_from_args(args, parser).dedupe
    with pytest.raises(ValueError, match="--dedupe applies to folder sources only"):
        open_source("photos", resolution=32, dedupe=True)


@pytest.mark.slow
def test_prepare_reports_every_skip_and_ignores_its_output_inside_the_source(ray_session, tmp_path):
    root = tmp_path / "images"
    images = write_pngs(root, ["cats/1.png", "cats/2.png", "dogs/3.png", "dogs/4.png"])
    (root / "dogs" / "copy.png").write_bytes((root / "cats" / "1.png").read_bytes())
    os.symlink("../dogs/3.png", root / "cats" / "alias.png")  # the same file under a second name
    os.symlink("..", root / "dogs" / "up")
    os.symlink("self", root / "cats" / "self")
    (root / "cats" / ".DS_Store").write_bytes(b"finder")
    output = root / "prepared"
    argv = ["--source", f"folder:{root}", "--output", str(output), "--resolution", "32", "--block-size", "2"]
    assert main([*argv, "--shard-rows", "2", "--no-progress"]) == 0
    first = json.loads((output / "report.json").read_text())
    # prepare makes its output folder before it lists the source: the listing already leaves it out.
    expected_skips = {"cats/.DS_Store": "hidden", "cats/self": "symlink loop", "dogs/up": "symlink loop",
                      "prepared": "output folder"}  # fmt: skip
    assert {s["path"]: s["reason"] for s in first["skipped"]} == expected_skips
    assert first["skipped_by_reason"] == {"hidden": 1, "symlink loop": 2, "output folder": 1}
    assert first["duplicates"] == [["cats/1.png", "dogs/copy.png"], ["cats/alias.png", "dogs/3.png"]]
    assert sorted(read_rows(output)) == sorted([*images, "dogs/copy.png", "cats/alias.png"])
    # The re-run finds its own output inside the source folder: skipped, not "the source changed".
    assert main([*argv, "--shard-rows", "2", "--no-progress"]) == 0
    again = json.loads((output / "report.json").read_text())
    assert {s["path"]: s["reason"] for s in again["skipped"]} == expected_skips
    assert again["images"] == first["images"] and again["this_run"]["images"] == 0
    assert main([*argv, "--shard-rows", "2", "--no-progress", "--dedupe", "--overwrite"]) == 0
    deduped = json.loads((output / "report.json").read_text())
    assert sorted(read_rows(output)) == sorted({*images, "cats/alias.png"} - {"dogs/3.png"})  # the first by path
    dropped = {s["path"] for s in deduped["skipped"] if s["reason"] == "duplicate"}
    assert dropped == {"dogs/copy.png", "dogs/3.png"} and deduped["duplicates"] == []
    assert deduped["images"]["written"] == len(images)


# Truncated files -------------------------------------------------------------------------------------


def idx_bytes(magic: int, header_count: int, shape: tuple[int, ...], data: np.ndarray) -> bytes:
    return np.array([magic, header_count, *shape], ">u4").tobytes() + data.tobytes()


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("labels_present", [100, 40])
def test_a_truncated_idx_file_keeps_its_complete_images(tmp_path, compressed, labels_present):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, labels_present, dtype=np.uint8)
    partial = rng.integers(0, 256, 300, dtype=np.uint8)  # the first bytes of image 51
    files = {
        "train-images-idx3-ubyte": idx_bytes(2051, 100, (28, 28), np.concatenate([images.ravel(), partial])),
        "train-labels-idx1-ubyte": idx_bytes(2049, 100, (), labels),
    }
    for name, data in files.items():
        (tmp_path / (name + ".gz" if compressed else name)).write_bytes(gzip.compress(data) if compressed else data)
    source = open_source(f"fashion-mnist:{tmp_path}", resolution=32)
    kept = min(50, labels_present)
    items = source.items()
    assert [item.id for item in items] == [f"train/{k:05d}" for k in range(kept)]
    loaded = list(source.load(items[kept - 7 :]))  # the last complete records
    for x, k in zip(loaded, range(kept - 7, kept)):
        np.testing.assert_array_equal(x.payload[2:30, 2:30, 0], images[k])
        assert x.label == labels[k]
    suffix = ".gz" if compressed else ""
    truncated = {s.relative: s.detail for s in source.skipped() if s.reason == "truncated"}
    assert "50 complete images of 100 the header promises" in truncated[f"train-images-idx3-ubyte{suffix}"]
    assert (f"train-labels-idx1-ubyte{suffix}" in truncated) == (labels_present < 100)


def write_cifar_batches(folder: Path, counts: dict[str, int], tail: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 train batches with ``counts[name]`` records; data_batch_2 gets ``tail`` bytes of a partial record."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for k, (name, count) in enumerate(counts.items()):
        images, labels, data = cifar10_records(count + 1, k)
        extra = tail if name == "data_batch_2" else 0
        (folder / f"{name}.bin").write_bytes(data[: count * CIFAR10_RECORD + extra])
        batches[name] = images[:count], labels[:count]
    return batches


@pytest.mark.parametrize("archive", [False, True])
def test_a_cifar10_file_with_a_truncated_tail_keeps_its_complete_records(tmp_path, archive):
    counts = {f"data_batch_{i}": 3 for i in range(1, 6)}
    batches = write_cifar_batches(tmp_path / "cifar-10-batches-bin", counts, tail=1000)
    path = tmp_path / "cifar-10-batches-bin"
    if archive:
        path = tmp_path / "cifar-10-binary.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    source = Cifar10Source(str(path), "train")
    items = source.items()
    assert [item.id for item in items] == [f"data_batch_{i}/{k:05d}" for i in range(1, 6) for k in range(3)]
    for loaded in source.load(items):
        name, index = loaded.id.split("/")
        images, labels = batches[name]
        np.testing.assert_array_equal(loaded.payload, images[int(index)])
        assert loaded.label == labels[int(index)]
    assert [(s.relative, s.reason) for s in source.skipped()] == [("data_batch_2.bin", "truncated")]
    assert "1000 bytes" in source.skipped()[0].detail
