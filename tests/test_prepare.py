"""pipelines/prepare.py end to end on one shared local Ray: rows against DCTCodec.analyze, statistics
against direct NumPy, rejections, reproducibility, resume, overwrite and argument errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dctdiff.commands.prepare_command import main
from dctdiff.core.codec import DCTCodec
from dctdiff.core.token_layout import PLANES
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.image_decoding import FitSpec, fit
from dctdiff.data.prepare_job import PrepareConfig, run_prepare
from dctdiff.data.shards import read_codec_params, read_pixels, read_shard, shard_files
from dctdiff.data.sources import FASHION_MNIST_DIR
from dctdiff.data.statistics import in_stats_sample, load_stats
from tests.prepare_data import BAD_FILES, BOMB_SIDE, CIFAR10_NAMES, write_cifar10, write_image_folder
from tests.test_grey_codec import reference_grey_tokens
from tests.test_stats import reference_stats

pytestmark = pytest.mark.slow
RESOLUTION, BLOCK = 32, 2


def read_rows(output: Path) -> dict[str, tuple[int, np.ndarray]]:
    """id -> (label, coefficients) over every shard; fails on a duplicated id."""
    rows: dict[str, tuple[int, np.ndarray]] = {}
    for uri in shard_files(str(output)):
        ids, labels, coefficients = read_shard(uri)
        for i, label, c in zip(ids, labels, coefficients):
            assert i not in rows, f"duplicated row {i}"
            rows[i] = (int(label), c)
    return rows


def analyze(images: np.ndarray, resolution: int = RESOLUTION, block: int = BLOCK) -> np.ndarray:
    """The reference coefficients [N, L, 6, B*B] in float64."""
    return DCTCodec(resolution, block, block**2, dtype=torch.float64).analyze(images).numpy()


def assert_float16_of(stored: np.ndarray, exact: np.ndarray) -> None:
    """stored is exact up to float16 rounding (relative 2^-11) of a float32 computation."""
    assert stored.dtype == np.float16
    assert np.all(np.abs(stored.astype(np.float64) - exact) <= np.abs(exact) * 2.0**-11 + 2e-3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("images")
    return root, write_image_folder(root)


def folder_config(root: Path, output: Path, **overrides) -> PrepareConfig:
    options = dict(
        source=f"folder:{root}",
        output=str(output),
        resolution=RESOLUTION,
        block_size=BLOCK,
        max_pixels=BOMB_SIDE**2 - 1,
        shard_rows=4,
        progress=False,
    )
    return PrepareConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def prepared(ray_module, folder, tmp_path_factory) -> tuple[Path, dict]:
    root, _ = folder
    output = tmp_path_factory.mktemp("prepared")
    return output, run_prepare(folder_config(root, output))


def test_rows_equal_codec_analysis_of_the_decoded_images(folder, prepared):
    _, expected = folder
    output, _ = prepared
    rows = read_rows(output)
    assert sorted(rows) == sorted(expected)
    ids = sorted(expected)
    reference = analyze(np.stack([fit(Image.fromarray(expected[i]), FitSpec(RESOLUTION)) for i in ids]))
    for i, exact in zip(ids, reference):
        label, stored = rows[i]
        assert label == (0 if i.startswith("cats/") else 1)
        assert_float16_of(stored, exact)
    assert json.loads((output / "labels.json").read_text()) == {"classes": ["cats", "dogs"]}
    assert read_codec_params(str(output)).block_size == BLOCK


def test_every_bad_file_is_reported_with_its_reason(folder, prepared):
    _, expected = folder
    output, report = prepared
    assert json.loads((output / "report.json").read_text()) == report
    assert {r["id"]: r["kind"] for r in report["rejected"]} == BAD_FILES
    assert all(r["reason"] for r in report["rejected"])
    good, bad = len(expected), len(BAD_FILES)
    assert report["images"] == {"read": good + bad, "written": good, "rejected": bad, "in_stats": good}
    assert report["rejected_by_kind"]["not an image"] == 2


def test_stats_match_numpy_over_the_stored_rows(prepared):
    output, _ = prepared
    stored = np.stack([c for _, c in read_rows(output).values()]).astype(np.float64)
    eta, entropy = reference_stats(stored)
    stats = load_stats(str(output))
    assert stats.eta == pytest.approx(eta, rel=0.005)
    for plane in PLANES:
        np.testing.assert_allclose(stats.entropy[plane], entropy[plane], atol=0.02)
    # float16 shards are counted exactly: the match is in fact exact.
    assert stats.eta == pytest.approx(eta, rel=1e-9)
    assert stats.counts["written"] == len(stored) and stats.codec["resolution"] == RESOLUTION


def test_same_input_same_rows_and_a_finished_run_is_not_redone(ray_session, folder, prepared, tmp_path):
    root, _ = folder
    output, _ = prepared
    again = run_prepare(folder_config(root, tmp_path / "again"))
    first, second = read_rows(output), read_rows(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[i][0] == second[i][0] and np.array_equal(first[i][1], second[i][1]) for i in first)
    assert (tmp_path / "again" / "stats.json").read_text() == (output / "stats.json").read_text()
    assert again["rejected"] == prepared[1]["rejected"]
    shard_times = {p: p.stat().st_mtime_ns for p in (output / "coefficients").iterdir()}
    resumed = run_prepare(folder_config(root, output))
    assert resumed["this_run"]["images"] == 0 and resumed["images"] == prepared[1]["images"]
    assert shard_times == {p: p.stat().st_mtime_ns for p in (output / "coefficients").iterdir()}


def test_lost_partitions_are_redone_exactly(ray_session, folder, tmp_path):
    """What a kill leaves (some partitions done, a temporary file) is finished without duplicates."""
    root, expected = folder
    output = tmp_path / "out"
    run_prepare(folder_config(root, output))
    complete = read_rows(output)
    for part in (1, 3):
        (output / "_parts" / f"part-{part:06d}.npz.z").unlink()
    (output / "coefficients" / "part-000003.parquet").unlink()
    (output / "coefficients" / ".part-000003.parquet.dead.tmp").write_bytes(b"half a file")
    report = run_prepare(folder_config(root, output))
    assert report["this_run"]["images"] == 8
    rows = read_rows(output)
    assert rows.keys() == complete.keys() and len(rows) == len(expected)
    assert all(np.array_equal(rows[i][1], complete[i][1]) for i in rows)
    assert not list((output / "coefficients").glob(".*"))


def test_changed_options_fail_fast_and_overwrite_starts_over(ray_session, folder, tmp_path):
    root, _ = folder
    output = tmp_path / "out"
    run_prepare(folder_config(root, output, limit=6))
    with pytest.raises(ValueError, match=r"block_size 2 \(wanted 4\).*--overwrite"):
        run_prepare(folder_config(root, output, limit=6, block_size=4))
    with pytest.raises(ValueError, match="options.*--overwrite"):
        run_prepare(folder_config(root, output, limit=5))
    report = run_prepare(folder_config(root, output, limit=5, block_size=4, overwrite=True))
    assert report["images"]["read"] == 5 and read_codec_params(str(output)).block_size == 4
    assert len(read_rows(output)) == report["images"]["written"]


def test_a_changed_source_is_not_resumed(ray_session, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k, crop in enumerate(photo_crops(3, 32, seed=1)):
        Image.fromarray(crop).save(images / f"{k}.png")
    config = PrepareConfig(f"folder:{images}", str(tmp_path / "out"), RESOLUTION, BLOCK, progress=False)
    run_prepare(config)
    Image.fromarray(photo_crops(1, 32, seed=2)[0]).save(images / "new.png")
    with pytest.raises(ValueError, match=r"source changed .* \(3 images then, 4 now\): pass --overwrite"):
        run_prepare(config)


def test_float32_rows_and_a_stats_sample(ray_session, folder, tmp_path):
    root, expected = folder
    report = run_prepare(folder_config(root, tmp_path / "f32", dtype="float32", stats_sample=0.5, seed=7))
    rows = read_rows(tmp_path / "f32")
    ids = sorted(expected)
    reference = analyze(np.stack([fit(Image.fromarray(expected[i]), FitSpec(RESOLUTION)) for i in ids]))
    for i, exact in zip(ids, reference):
        assert rows[i][1].dtype == np.float32
        np.testing.assert_allclose(rows[i][1], exact, atol=2e-3)
    assert report["images"]["in_stats"] == sum(in_stats_sample(i, 0.5, seed=7) for i in ids)
    assert 0 < report["images"]["in_stats"] < len(ids)


def test_cifar10_archive_rows_and_labels(ray_session, tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-binary.tar.gz", per_batch=6, archive=True)
    output = tmp_path / "cifar"
    source = f"cifar10:{tmp_path / 'cifar-10-binary.tar.gz'}"
    argv = ["--source", source, "--output", str(output), "--preset", "cifar10", "--split", "test", "--no-progress"]
    assert main(argv) == 0
    rows = read_rows(output)
    images, labels = batches["test_batch"]
    assert sorted(rows) == [f"test_batch/{i:05d}" for i in range(6)]
    for k, exact in enumerate(analyze(images)):
        label, stored = rows[f"test_batch/{k:05d}"]
        assert label == labels[k]
        assert_float16_of(stored, exact)
    assert json.loads((output / "labels.json").read_text())["classes"] == CIFAR10_NAMES


def test_photos_demo_set_via_the_cli(ray_session, tmp_path, capsys):
    output = tmp_path / "demo"
    argv = ["--source", "photos", "--output", str(output), "--preset", "demo", "--limit", "24", "--seed", "3"]
    assert main([*argv, "--shard-rows", "10", "--no-progress"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prepare:")][-1]
    assert "24 images" in summary and "24 rows in 3 shards, 0 rejected" in summary
    seconds = json.loads((output / "report.json").read_text())["this_run"]["seconds"]
    shown = float(re.search(r"\(([0-9.]+) images/s\)", summary).group(1))  # was "0 images/s" below 0.5 images/s
    assert shown == pytest.approx(24 / seconds, rel=0.01)
    assert "MiB" in summary
    rows = read_rows(output)
    for k, exact in enumerate(analyze(photo_crops(24, 32, seed=3))):
        assert_float16_of(rows[f"photos-s3/{k:06d}"][1], exact)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_rows(ray_session, tmp_path):
    import gzip

    config = PrepareConfig(
        source="fashion-mnist",
        output=str(tmp_path / "fm"),
        resolution=32,
        block_size=2,
        split="test",
        limit=200,
        progress=False,
        store_pixels=True,
    )
    report = run_prepare(config)
    assert report["images"]["written"] == 200
    raw = gzip.decompress(Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").read_bytes())
    grey = np.frombuffer(raw[16 : 16 + 200 * 784], np.uint8).reshape(200, 28, 28)
    padded = np.zeros((200, 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = grey
    rows = read_rows(tmp_path / "fm")
    # --colour auto picks grey for this single-channel source: Y only, [L, 4, B*B] rows (per-block scipy DCT).
    params = read_codec_params(str(tmp_path / "fm"))
    assert params.colour == "grey" and params.shape == (64, 4, 4)
    assert json.loads((tmp_path / "fm" / "prepare.json").read_text())["codec"]["colour"] == "grey"
    exact = reference_grey_tokens(padded[..., None].repeat(3, axis=-1), 2, 4).reshape(200, 64, 4, 4)
    for k in range(200):
        assert_float16_of(rows[f"test/{k:05d}"][1], exact[k])
    assert set(load_stats(str(tmp_path / "fm")).entropy) == {"Y"}
    stored = np.concatenate([read_pixels(uri) for uri in shard_files(str(tmp_path / "fm"))])
    np.testing.assert_array_equal(stored, padded[..., None])  # [N, 32, 32, 1], in row order


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--resolution", "30", "--block-size", "2"], "multiple of 2 x block size"),
        (["--preset", "cifar10", "--resolution", "32"], "either --preset or"),
        ([], "give --preset"),
        (["--preset", "cifar10", "--stats-sample", "0"], "--stats-sample must be"),
        (["--preset", "cifar10", "--dtype", "float64"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_at_once_with_a_fix(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--source", "photos", "--output", str(tmp_path / "o"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_source_fails_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--source", "imagenet:/data", "--output", str(tmp_path / "o"), "--preset", "cifar10"])
    assert "use folder:PATH, cifar10:PATH" in capsys.readouterr().err


def test_pixel_tokens_of_a_prepared_set_equal_pixel_codec_encode(ray_session, folder, tmp_path):
    """--store-pixels keeps the source pixels beside the coefficients (same ids, same rows); the pixel
    baseline's tokens built from them, through the launcher's column selection and the worker loop's
    batch_from_rows, equal PixelCodec.encode of the source images exactly (full chroma, no DCT round trip)."""
    import ray.data

    from dctdiff.core.codec import PixelCodec
    from dctdiff.models.builders import build_codec
    from dctdiff.models.config import build_config
    from dctdiff.training.dataset_info import load_dataset_info
    from dctdiff.training.device_batches import batch_from_rows

    root, expected = folder
    output = tmp_path / "with-pixels"
    run_prepare(folder_config(root, output, store_pixels=True))
    params = read_codec_params(str(output))
    assert params.colour == "ycbcr420" and params.pixels  # auto: a folder source is ycbcr420
    config = build_config("demo", overrides=["data.space=pixel", "data.patch_size=4"])
    info = load_dataset_info(str(output), config)
    assert info.column == "pixels" and info.colour == "ycbcr420"
    codec = build_codec(config, info.eta, info.colour)
    dataset = ray.data.read_parquet(info.shards_uri).select_columns(["id", "label", info.column])
    reference = PixelCodec(RESOLUTION, 4)
    seen = 0
    for rows in dataset.iter_batches(batch_size=5, batch_format="numpy"):
        batch = batch_from_rows(rows, config, codec, info.column, torch.device("cpu"))
        sources = np.stack([fit(Image.fromarray(expected[i]), FitSpec(RESOLUTION)) for i in batch.ids])
        assert torch.equal(batch.tokens, reference.encode(sources))
        seen += len(batch.ids)
    assert seen == len(expected)
    dct_only = read_rows(output)  # the coefficients are unchanged by --store-pixels
    assert sorted(dct_only) == sorted(expected)
