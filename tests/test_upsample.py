"""DCT upsampling: against a plain per-block scipy reference, exact cases (block-constant images, the
block's own cosine basis), a smooth band-limited image against nearest neighbour; the Ray Data job over a
folder and the --compare report."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.fft import dctn, idctn

from dctdiff.core.dct_upsampling import dct_upsample, pil_resize, upsampling_matrix
from dctdiff.core.image_metrics import psnr, ssim
from dctdiff.evaluation.image_sets import ImageSetError, open_image_set, read_image


def reference_upsample(images: np.ndarray, block_size: int) -> np.ndarray:
    """The paper's recipe block by block: DCT, scale by 2, zero-pad to 2B x 2B, inverse DCT."""
    n, height, width, channels = images.shape
    b = block_size
    out = np.zeros((n, 2 * height, 2 * width, channels))
    for i in range(n):
        for c in range(channels):
            for top in range(0, height, b):
                for left in range(0, width, b):
                    padded = np.zeros((2 * b, 2 * b))
                    padded[:b, :b] = 2.0 * dctn(images[i, top : top + b, left : left + b, c], norm="ortho")
                    out[i, 2 * top : 2 * top + 2 * b, 2 * left : 2 * left + 2 * b, c] = idctn(padded, norm="ortho")
    return out


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_matches_per_block_reference(block_size):
    images = np.random.default_rng(block_size).uniform(0, 255, (2, 16, 24, 3))
    np.testing.assert_allclose(dct_upsample(images, block_size), reference_upsample(images, block_size), atol=1e-9)
    twice = reference_upsample(reference_upsample(images, block_size), block_size)
    np.testing.assert_allclose(dct_upsample(images, block_size, factor=4), twice, atol=1e-9)


@pytest.mark.parametrize("block_size", [2, 4, 8])
@pytest.mark.parametrize("factor", [2, 4])
def test_block_constant_image_is_exact(block_size, factor):
    levels = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3))  # [N, blocks down, blocks across, RGB]
    image = np.repeat(np.repeat(levels, block_size, axis=1), block_size, axis=2).astype(np.uint8)
    expected = np.repeat(np.repeat(image, factor, axis=1), factor, axis=2)
    np.testing.assert_array_equal(dct_upsample(image, block_size, factor), expected)


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_block_cosines_are_resampled_exactly(block_size):
    """Each 2-D DCT basis image of a block is a sampled continuous cosine; x2 must give that cosine at
    the output pixel centres t = m/2 - 1/4 (module docstring)."""
    b = block_size
    k = np.arange(b)

    def cosine(freq: np.ndarray, positions: np.ndarray) -> np.ndarray:  # [B, len(positions)]
        return np.cos(np.pi * (2 * positions[None] + 1) * freq[:, None] / (2 * b))

    coarse, fine = cosine(k, np.arange(b)), cosine(k, np.arange(2 * b) / 2 - 0.25)
    basis = np.einsum("ki,lj->klij", coarse, coarse).reshape(b * b, b, b, 1)
    expected = np.einsum("ki,lj->klij", fine, fine).reshape(b * b, 2 * b, 2 * b, 1)
    np.testing.assert_allclose(dct_upsample(basis, b), expected, atol=1e-12)


@pytest.mark.parametrize("block_size", [4, 8])
def test_smooth_image_closer_to_ideal_than_nearest_neighbour(block_size):
    """A band-limited image sampled at the coarse pixel centres; the ideal x2 is the same function at
    the fine pixel centres."""

    def smooth(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return 128 + 60 * np.cos(2 * np.pi * (0.06 * u + 0.03 * v) + 0.4) + 30 * np.sin(2 * np.pi * 0.045 * v + 1.0)

    size = 32
    coarse = np.arange(size, dtype=np.float64)
    fine = np.arange(2 * size) / 2 - 0.25
    low = smooth(coarse[:, None], coarse[None, :])[None, ..., None]
    ideal = smooth(fine[:, None], fine[None, :])[None, ..., None]
    dct_error = np.sqrt(np.mean((dct_upsample(low, block_size) - ideal) ** 2))
    nearest_error = np.sqrt(np.mean((np.repeat(np.repeat(low, 2, axis=1), 2, axis=2) - ideal) ** 2))
    assert dct_error < 0.5 * nearest_error


def test_torch_input_and_matrix():
    images = torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8)
    out = dct_upsample(images, 4)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == (1, 16, 16, 3)
    assert upsampling_matrix(4).shape == (8, 4)


def test_bad_inputs_raise():
    images = np.zeros((1, 12, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="divisible by block_size 8"):
        dct_upsample(images, 8)
    with pytest.raises(ValueError, match="factor"):
        dct_upsample(images, 4, factor=3)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        dct_upsample(images[0], 4)
    with pytest.raises(TypeError, match="uint8 or floating"):
        dct_upsample(images.astype(np.int32), 4)
    with pytest.raises(ValueError, match="method"):
        pil_resize(images, (24, 24), "cubic")


def write_images(folder, names_and_sizes):
    from dctdiff.data.bundled_photos import photo_crops

    for i, (name, (height, width)) in enumerate(names_and_sizes):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_crops(1, max(height, width), seed=i)[0][:height, :width]).save(path)


@pytest.mark.slow
def test_folder_job_writes_dct_upsampled_pngs(ray_session, tmp_path):
    from dctdiff.evaluation.upsample_job import upsample_folder

    source, output = tmp_path / "in", tmp_path / "out"
    write_images(source, [("a.png", (16, 24)), ("sub/b.jpg", (32, 32))])
    assert upsample_folder(str(source), str(output), block_size=4, factor=2) == 2
    for name, out_name in [("a.png", "a.png"), ("sub/b.jpg", "sub/b.png")]:
        expected = dct_upsample(read_image(str(source / name))[None], 4)[0]
        np.testing.assert_array_equal(np.asarray(Image.open(output / out_name)), expected)


def test_folder_job_bad_inputs(tmp_path):
    from dctdiff.commands.upsample_command import main
    from dctdiff.evaluation.upsample_job import upsample_folder

    write_images(tmp_path / "odd", [("a.png", (16, 24)), ("b.png", (30, 30))])
    with pytest.raises(ImageSetError, match=r"b.png is 30x30, not divisible by --block-size 4"):
        upsample_folder(str(tmp_path / "odd"), str(tmp_path / "out"), block_size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match="no image files"):
        upsample_folder(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="must differ"):
        upsample_folder(str(tmp_path / "odd"), str(tmp_path / "odd"))
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2


@pytest.mark.slow
def test_compare_report(ray_session, tmp_path):
    from dctdiff.evaluation.upsample_job import COMPARE_METHODS, compare

    image_set = open_image_set("photos:4", resolution=32)
    rows = compare(image_set, str(tmp_path), block_size=4, batch_size=16)
    assert [row.method for row in rows] == list(COMPARE_METHODS)
    originals = image_set.load()
    low = pil_resize(originals, (16, 16), "bicubic")
    dct = dct_upsample(low, 4)
    assert rows[0].psnr == pytest.approx(psnr(originals, dct).mean())
    assert rows[0].ssim == pytest.approx(ssim(originals, dct).mean())
    assert rows[2].psnr == pytest.approx(psnr(originals, pil_resize(low, (32, 32), "lanczos")).mean())
    assert all(np.isfinite(row.fid) and row.fid > 0 for row in rows)
    with open(tmp_path / "compare.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == list(COMPARE_METHODS)
    assert float(table[1]["fid"]) == pytest.approx(rows[1].fid)
    assert Image.open(tmp_path / "compare.png").size[0] > 300


@pytest.mark.slow
def test_folder_job_and_compare_write_through_uris(ray_session, tmp_path):
    from dctdiff.evaluation.upsample_job import COMPARE_METHODS, compare, upsample_folder

    write_images(tmp_path / "in", [("a.png", (16, 24)), ("sub/b.png", (8, 8))])
    assert upsample_folder(str(tmp_path / "in"), f"file://{tmp_path}/out", block_size=4, factor=2) == 2
    for name in ("a.png", "sub/b.png"):
        expected = dct_upsample(read_image(str(tmp_path / "in" / name))[None], 4)[
            0
        ]  # checked against the reference above
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / name)), expected)
    rows = compare(open_image_set("photos:4", resolution=32), f"file://{tmp_path}/report", block_size=4, batch_size=16)
    with open(tmp_path / "report" / "compare.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == list(COMPARE_METHODS)
    for written, row in zip(table, rows, strict=True):
        assert [float(written[k]) for k in ("psnr", "ssim", "fid")] == pytest.approx([row.psnr, row.ssim, row.fid])
    with Image.open(tmp_path / "report" / "compare.png") as preview:
        assert preview.format == "PNG" and preview.width > 300
    assert list(tmp_path.rglob(".*.tmp")) == []
