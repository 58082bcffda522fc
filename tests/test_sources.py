"""Image sources, decoding and resizing (dctdiff.data.sources, dctdiff.data.image_decoding) on real files made here."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.image_decoding import FitSpec, ImageRejected, decode, fit, prepare_array, prepare_encoded
from dctdiff.data.sources import (
    FASHION_MNIST_DIR,
    Cifar10Source,
    FolderSource,
    ParquetSource,
    PhotosSource,
    open_source,
)
from tests.prepare_data import BAD_FILES, BOMB_SIDE, CIFAR10_NAMES, encode, write_cifar10, write_image_folder

MAX_PIXELS = BOMB_SIDE**2 - 1


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("images")
    return root, write_image_folder(root)


def test_every_good_file_decodes_to_the_expected_rgb(image_folder):
    root, expected = image_folder
    for name, pixels in expected.items():
        image = decode((root / name).read_bytes(), MAX_PIXELS)
        assert image.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(image), pixels, err_msg=name)


def test_every_bad_file_is_rejected_with_its_reason(image_folder):
    root, _ = image_folder
    spec = FitSpec(32, max_pixels=MAX_PIXELS)
    for name, kind in BAD_FILES.items():
        with pytest.raises(ImageRejected) as caught:
            prepare_encoded((root / name).read_bytes(), spec)
        assert caught.value.kind == kind, (name, caught.value)
    with pytest.raises(ImageRejected, match="pass --upscale"):
        prepare_encoded((root / "cats/tiny.png").read_bytes(), spec)


def test_upscale_accepts_small_images_and_the_pixel_limit_is_configurable(image_folder):
    root, _ = image_folder
    tiny = prepare_encoded((root / "cats/tiny.png").read_bytes(), FitSpec(32, upscale=True))
    assert tiny.shape == (32, 32, 3) and tiny.dtype == np.uint8
    bomb = prepare_encoded((root / "dogs/bomb.png").read_bytes(), FitSpec(32, max_pixels=BOMB_SIDE**2))
    np.testing.assert_array_equal(bomb, 0)  # the all-black "bomb" is fine under a higher limit


def test_float_images_are_rejected():
    with pytest.raises(ImageRejected, match="mode F"):
        decode(encode(Image.fromarray(np.ones((40, 40), np.float32)), "TIFF"))


def test_fit_keeps_exact_size_and_centre_crops_without_resampling():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit(Image.fromarray(square), FitSpec(32)), square)
    wide = rng.integers(0, 256, (32, 50, 3), dtype=np.uint8)  # short side already R: pure centre crop
    np.testing.assert_array_equal(fit(Image.fromarray(wide), FitSpec(32)), wide[:, 9:41])
    tall = rng.integers(0, 256, (45, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit(Image.fromarray(tall), FitSpec(32)), tall[6:38])


def test_fit_box_halves_exact_multiples():
    base = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    big = base.repeat(4, axis=0).repeat(4, axis=1)  # [64, 96]: each pixel a 4x4 block
    np.testing.assert_array_equal(fit(Image.fromarray(big), FitSpec(16)), base[:, 4:20])


def test_fit_downscale_is_antialiased():
    """A fine checkerboard averages to grey (aliasing would keep or invert the pattern)."""
    board = (np.indices((96, 96)).sum(0) % 2 * 255).astype(np.uint8)
    out = fit(Image.fromarray(board).convert("RGB"), FitSpec(32))
    assert np.abs(out.astype(int) - 127.5).max() <= 2


def test_fit_crop_box_first():
    image = np.random.default_rng(2).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    out = fit(Image.fromarray(image), FitSpec(128, crop_box=(57, 25, 128, 128)))
    np.testing.assert_array_equal(out, image[57:185, 25:153])
    with pytest.raises(ImageRejected, match="crop box"):
        fit(Image.fromarray(image[:100]), FitSpec(64, crop_box=(57, 25, 128, 128)))


def test_prepare_array_pads_nothing_and_repeats_grey():
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    out = prepare_array(grey, FitSpec(32))
    assert out.shape == (32, 32, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))


def test_folder_source_lists_sorted_ids_with_class_labels(image_folder):
    root, expected = image_folder
    source = FolderSource(str(root))
    items = source.items()
    ids = [item.id for item in items]
    assert ids == sorted(set(expected) | set(BAD_FILES))
    assert source.class_names() == ["cats", "dogs"]
    loaded = {x.id: x for x in source.load(items)}
    assert all(loaded[i].label == (0 if i.startswith("cats/") else 1) for i in ids)
    assert loaded["cats/rgb.png"].payload == (root / "cats/rgb.png").read_bytes()
    assert FolderSource(str(root), unlabeled=True).class_names() is None


def test_folder_without_class_folders_is_unlabeled_and_unreadable_files_are_rejected(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(encode(Image.new("RGB", (32, 32)), "PNG"))
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    source = FolderSource(str(tmp_path))
    items = source.items()
    assert [i.id for i in items] == ["a.png", "sub/b.png"] and source.class_names() is None
    (tmp_path / "sub" / "b.png").unlink()
    loaded = list(source.load(items))
    assert loaded[0].label == -1 and isinstance(loaded[0].payload, bytes)
    assert isinstance(loaded[1].payload, ImageRejected) and loaded[1].payload.kind == "unreadable"


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_binary_records(tmp_path, archive):
    path = tmp_path / ("cifar-10-binary.tar.gz" if archive else "cifar")
    batches = write_cifar10(path, per_batch=7, archive=archive)
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        source = Cifar10Source(str(path), split)
        items = source.items()
        assert [i.id for i in items] == [f"{n}/{k:05d}" for n in names for k in range(7)]
        assert source.class_names() == CIFAR10_NAMES
        # A partition that starts inside one batch and ends inside the next.
        part = items[5:12] if split == "train" else items[2:6]
        for loaded in source.load(part):
            name, index = loaded.id.split("/")
            images, labels = batches[name]
            np.testing.assert_array_equal(loaded.payload, images[int(index)])
            assert loaded.label == labels[int(index)]


def test_cifar10_rejects_pickles_and_bad_paths(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="binary version"):
        Cifar10Source(str(tmp_path), "train")
    with pytest.raises(ValueError, match="does not exist"):
        Cifar10Source(str(tmp_path / "missing.tar.gz"), "train")


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    header = np.array([2051, len(images), 28, 28], ">u4").tobytes()
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    label_header = np.array([2049, len(labels)], ">u4").tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(label_header + labels.tobytes()))


def test_fashion_mnist_idx_is_padded_to_32_and_rgb(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 9, dtype=np.uint8)
    write_idx(tmp_path, "t10k", images, labels)
    source = open_source(f"fashion-mnist:{tmp_path}", resolution=32, split="test")
    loaded = list(source.load(source.items()[3:8]))
    assert [x.id for x in loaded] == [f"test/{i:05d}" for i in range(3, 8)]
    for x, k in zip(loaded, range(3, 8)):
        assert x.payload.shape == (32, 32, 3) and x.label == labels[k]
        np.testing.assert_array_equal(x.payload[2:30, 2:30, 1], images[k])
        assert x.payload[:2].sum() == x.payload[30:].sum() == x.payload[:, :2].sum() == x.payload[:, 30:].sum() == 0


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_debian_package():
    """The real data set: 60000 / 10000 images, balanced classes (6000 / 1000 per class)."""
    for split, count in (("train", 60000), ("test", 10000)):
        source = open_source("fashion-mnist", resolution=32, split=split)
        items = source.items()
        assert len(items) == count
        last = list(source.load(items[-100:]))
        assert all(x.payload.shape == (32, 32, 3) and 0 <= x.label < 10 for x in last)
        assert np.bincount([x.label for x in source.load(items)], minlength=10).tolist() == [count // 10] * 10
    assert source.class_names()[9] == "Ankle boot"


def write_hf_parquet(path: Path, images: list[bytes | None], labels: list[int] | None, row_group: int) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {"image": pa.array([{"bytes": b, "path": None} for b in images], image_type)}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    metadata = {b"huggingface": b'{"info": {"features": {"label": {"names": ["a", "b", "c"], "_type": "ClassLabel"}}}}'}
    pq.write_table(pa.table(columns).replace_schema_metadata(metadata), path, row_group_size=row_group)


def test_parquet_source_reads_hugging_face_layout(tmp_path):
    crops = photo_crops(10, 32, seed=4)
    data = [encode(Image.fromarray(c), "PNG") for c in crops]
    (tmp_path / "train").mkdir()
    write_hf_parquet(tmp_path / "train" / "part-0.parquet", data[:6], [0, 1, 2, 0, 1, 2], row_group=4)
    write_hf_parquet(tmp_path / "train" / "part-1.parquet", data[6:] + [None], [2, 2, 1, 0, 1], row_group=2)
    source = ParquetSource(str(tmp_path))
    items = source.items()
    assert [i.id for i in items][:2] == ["train/part-0.parquet/000000", "train/part-0.parquet/000001"]
    assert len(items) == 11 and source.class_names() == ["a", "b", "c"]
    loaded = list(source.load(items[3:11]))  # crosses row groups and files
    for x, k in zip(loaded[:7], range(3, 10)):
        np.testing.assert_array_equal(np.asarray(decode(x.payload)), crops[k])
    assert [x.label for x in loaded] == [0, 1, 2, 2, 2, 1, 0, 1]
    assert isinstance(loaded[-1].payload, ImageRejected)
    write_hf_parquet(tmp_path / "unlabeled.parquet", data[:2], None, row_group=1)
    unlabeled = ParquetSource(str(tmp_path / "unlabeled.parquet"))
    assert [x.label for x in unlabeled.load(unlabeled.items())] == [-1, -1]


def test_parquet_source_without_image_column_fails_clearly(tmp_path):
    pq.write_table(pa.table({"pixels": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="`image` column"):
        ParquetSource(str(tmp_path / "x.parquet"))


def test_photos_source_is_deterministic_per_index():
    source = PhotosSource(count=6, size=32, seed=5)
    items = source.items()
    everything = photo_crops(6, 32, seed=5)
    tail = list(source.load(items[2:]))
    for x, k in zip(tail, range(2, 6)):
        np.testing.assert_array_equal(x.payload, everything[k])
    assert open_source("photos", resolution=32, limit=6, seed=5).items() == items


@pytest.mark.parametrize(
    "text,message",
    [
        ("imagenet:/x", "unknown --source"),
        ("folder:", "needs a path"),
        ("folder:/does/not/exist", "does not exist"),
        ("parquet:/does/not/exist", "does not exist"),
        ("fashion-mnist:/does/not/exist", "--source fashion-mnist:PATH /does/not/exist does not exist"),
    ],
)
def test_bad_source_specs_say_what_to_give(text, message):
    with pytest.raises(ValueError, match=message):
        open_source(text, resolution=32)


def test_split_and_unlabeled_only_where_they_mean_something(tmp_path):
    with pytest.raises(ValueError, match="--split applies"):
        open_source(f"folder:{tmp_path}", resolution=32, split="test")
    with pytest.raises(ValueError, match="--unlabeled applies"):
        open_source("photos", resolution=32, unlabeled=True)


def test_png_roundtrip_helper_is_lossless():
    """Guard for the expectations above: PNG encode + Pillow decode is exact."""
    pixels = photo_crops(1, 32, seed=6)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(pixels), "PNG")))), pixels)
