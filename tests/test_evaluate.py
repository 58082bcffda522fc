"""Image sets (folders, prepare outputs, .npz, statistics, sources), the reconstruction analysis, and the
evaluate pipeline end to end on Ray with MLflow logging."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dctdiff.core.codec import DCTCodec
from dctdiff.core.image_metrics import mse, psnr_from_mse
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.sources import FASHION_MNIST_DIR
from dctdiff.evaluation.fid import FEATURE_DIM, FIDStats, fid_from_stats, load_fid_stats, save_fid_stats
from dctdiff.evaluation.image_sets import ImageSetError, PreparedImages, open_image_set
from dctdiff.evaluation.reconstruction import ReconstructionRow, choose_keep, reconstructions
from tests.fid_reference import compute_fid_stats, reconstruction_analysis
from tests.image_checks import assert_equal_up_to_rounding
from tests.prepared import write_prepared


def save_folder(folder, images, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}{suffix}")
    return folder


# Image sets ------------------------------------------------------------------------------------------


def test_folder_set_reads_sorted_images_recursively(tmp_path):
    images = photo_crops(4, 24, seed=0)
    save_folder(tmp_path / "set", images[:2])
    save_folder(tmp_path / "set" / "sub", images[2:])
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    image_set = open_image_set(str(tmp_path / "set"))
    assert (image_set.count, image_set.size) == (4, (24, 24))
    np.testing.assert_array_equal(image_set.load(), images)
    assert open_image_set(str(tmp_path / "set"), limit=3).load().shape == (3, 24, 24, 3)
    assert open_image_set(str(tmp_path / "set"), resolution=16).load().shape == (4, 16, 16, 3)


def test_folder_set_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match="holds no image files"):
        open_image_set(str(tmp_path / "empty"))
    mixed = save_folder(tmp_path / "mixed", photo_crops(2, 24))
    Image.fromarray(photo_crops(1, 32)[0]).save(mixed / "big.png")
    with pytest.raises(ImageSetError, match=r"mixes image sizes: .*000.png is 24x24 but .*big.png is 32x32"):
        open_image_set(str(mixed))
    corrupt = save_folder(tmp_path / "corrupt", photo_crops(2, 24))
    (corrupt / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageSetError, match=r"bad.png: not an image file"):
        open_image_set(str(corrupt))
    truncated = save_folder(tmp_path / "truncated", photo_crops(2, 24))
    data = (truncated / "001.png").read_bytes()
    (truncated / "001.png").write_bytes(data[: len(data) // 2])  # the header still reads
    with pytest.raises(ImageSetError, match=r"001.png: corrupt"):
        open_image_set(str(truncated)).load()
    with pytest.raises(ImageSetError, match="does not exist"):
        open_image_set(str(tmp_path / "missing"))


def test_npz_sets_images_and_statistics(tmp_path):
    images = photo_crops(3, 16)
    for key in ("images", "arr_0", "samples"):
        np.savez(tmp_path / f"{key}.npz", **{key: images})
        np.testing.assert_array_equal(open_image_set(str(tmp_path / f"{key}.npz")).load(), images)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
    with pytest.raises(ImageSetError, match="must be uint8"):
        open_image_set(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(ImageSetError, match="expected FID statistics"):
        open_image_set(str(tmp_path / "two.npz"))
    with pytest.raises(ImageSetError, match="not at resolution 32"):
        open_image_set(str(tmp_path / "images.npz"), resolution=32)
    stats = FIDStats(np.arange(FEATURE_DIM, dtype=np.float64), np.eye(FEATURE_DIM))
    save_fid_stats(tmp_path / "stats.npz", stats)
    loaded = open_image_set(str(tmp_path / "stats.npz"))
    assert isinstance(loaded, FIDStats)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.savez(tmp_path / "narrow.npz", mu=np.zeros(768), sigma=np.eye(768))
    with pytest.raises(ImageSetError, match=r"width mu \[768\]"):
        open_image_set(str(tmp_path / "narrow.npz"))


def test_prepared_set_decodes_the_stored_coefficients(tmp_path):
    images = photo_crops(5, 16, seed=2)
    write_prepared(tmp_path / "prep", images, block_size=2, shards=2)
    image_set = open_image_set(str(tmp_path / "prep"))
    assert isinstance(image_set, PreparedImages) and (image_set.count, image_set.size) == (5, (16, 16))
    codec = DCTCodec(16, 2, 4)
    stored = codec.analyze(images).numpy().astype(np.float16).astype(np.float32)  # shards hold float16
    # Decoded per shard here, in one batch there: float rounding near .5 depends on the batch shape.
    assert_equal_up_to_rounding(image_set.load(), codec.decode(codec.tokens_from_coefficients(stored)).numpy())
    assert open_image_set(str(tmp_path / "prep"), limit=4).count == 4


def test_grey_prepared_sets_decode_in_their_mode_or_give_their_stored_pixels(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8).repeat(3, axis=-1)
    write_prepared(tmp_path / "grey", grey, colour="grey")
    decoded = open_image_set(str(tmp_path / "grey")).load()  # from float16 Y coefficients: R = G = B
    assert (decoded == decoded[..., :1]).all() and np.abs(decoded.astype(int) - grey).max() <= 1
    write_prepared(tmp_path / "pixels", grey, colour="grey", store_pixels=True)
    np.testing.assert_array_equal(open_image_set(str(tmp_path / "pixels")).load(), grey)


def test_photos_and_source_sets(tmp_path):
    with pytest.raises(ImageSetError, match="needs a resolution"):
        open_image_set("photos:4")
    with pytest.raises(ImageSetError, match="photos:N"):
        open_image_set("photos:many", resolution=16)
    np.testing.assert_array_equal(open_image_set("photos:3", resolution=16).load(), photo_crops(3, 16, seed=0))
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    fashion = open_image_set("fashion-mnist", limit=5).load()  # 28x28 grey, zero-padded to 32x32, as RGB
    assert fashion.shape == (5, 32, 32, 3) and (fashion[..., 0] == fashion[..., 2]).all()
    assert (fashion[:, :2] == 0).all() and fashion.max() > 200


# Reconstruction analysis -----------------------------------------------------------------------------


def test_reconstructions_equal_decode_of_encode():
    images = photo_crops(3, 16, seed=4)
    for keep, rebuilt in reconstructions(images, block_size=2).items():
        codec = DCTCodec(16, 2, keep, eta=3.0, dtype=torch.float64)  # eta cancels out
        assert_equal_up_to_rounding(rebuilt, codec.decode(codec.encode(images)).numpy())  # float32 rounding only


def test_choose_keep_is_the_smallest_under_gamma():
    rows = [ReconstructionRow(k, rfid, 0.0) for k, rfid in [(1, 9.0), (2, 0.4), (3, 0.6), (4, 0.1)]]
    assert choose_keep(rows, 0.5) == 2
    assert choose_keep(rows, 0.05) is None


RECONSTRUCTION_IMAGES = 6


@pytest.fixture(scope="module")
def reconstruction_rows():
    return reconstruction_analysis(photo_crops(RECONSTRUCTION_IMAGES, 32, seed=0), block_size=2)


def test_reconstruction_fid_falls_as_keep_grows(reconstruction_rows):
    rows = reconstruction_rows
    assert [r.keep for r in rows] == [1, 2, 3, 4]
    rfids, psnrs = [r.rfid for r in rows], [r.psnr for r in rows]
    assert all(a > b for a, b in zip(rfids, rfids[1:])), rfids
    assert all(a < b for a, b in zip(psnrs, psnrs[1:])), psnrs
    images = photo_crops(RECONSTRUCTION_IMAGES, 32, seed=0)
    rebuilt = reconstructions(images, 2)
    np.testing.assert_allclose(psnrs, [psnr_from_mse(mse(images, rebuilt[k]).mean()) for k in (1, 2, 3, 4)], rtol=1e-9)


# The pipeline on Ray, logged to MLflow ---------------------------------------------------------------


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
def test_fid_pipeline_matches_in_process_and_logs(ray_session, tmp_path, tracking_uri, capsys):
    from mlflow.tracking import MlflowClient

    from dctdiff.commands.evaluate_command import main
    from dctdiff.evaluation.evaluate_job import run_fid
    from dctdiff.infra.mlflow_tracking import TrackingOptions

    samples = photo_crops(5, 32, seed=0)
    np.savez(tmp_path / "samples.npz", images=samples)
    write_prepared(tmp_path / "prep", photo_crops(5, 32, seed=9), block_size=2)
    reference = compute_fid_stats(open_image_set(str(tmp_path / "prep")).load(), device="cpu")
    expected = fid_from_stats(compute_fid_stats(samples, device="cpu"), reference)

    argv = [
        "fid",
        str(tmp_path / "samples.npz"),
        str(tmp_path / "prep"),
        "--save-stats",
        str(tmp_path / "ref.npz"),
        "--mlflow-uri",
        tracking_uri,
        "--batch-size",
        "10",
    ]
    assert main(argv) == 0
    ref = load_fid_stats(tmp_path / "ref.npz")
    np.testing.assert_allclose(ref.mu, reference.mu, rtol=1e-5, atol=1e-7)
    assert (ref.precision, ref.images, ref.source) == ("fp32", 5, str(tmp_path / "prep"))  # fp32 by default
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dctdiff-evaluate").experiment_id])
    assert run.data.metrics["fid"] == pytest.approx(expected, rel=1e-5)
    assert run.data.tags["fid.reference"] == str(tmp_path / "prep")

    # Against saved statistics, logged into an existing (e.g. training) run that stays RUNNING.
    experiment = client.create_experiment("training")
    training_run = client.create_run(experiment).info.run_id
    fid = run_fid(
        [str(tmp_path / "samples.npz"), str(tmp_path / "ref.npz")],
        batch_size=6,
        tracking=TrackingOptions(tracking_uri, run_id=training_run),
        step=500,
    )
    assert fid == pytest.approx(expected, rel=1e-5)
    history = client.get_metric_history(training_run, "fid")
    assert [(m.step, round(m.value, 6)) for m in history] == [(500, round(fid, 6))]
    assert client.get_run(training_run).info.status == "RUNNING"

    # --precision reaches the Inception actors: bf16 (here CPU autocast) moves the FID a little
    bf16 = run_fid([str(tmp_path / "samples.npz"), str(tmp_path / "prep")], tracking=None, precision="bf16")
    assert bf16 != pytest.approx(expected, rel=1e-5) and bf16 == pytest.approx(expected, rel=0.01)  # measured 0.13%

    # bf16 samples against the fp32 statistics: refused with one line, unless asked for (then a warning)
    argv = ["fid", str(tmp_path / "samples.npz"), str(tmp_path / "ref.npz"), "--precision", "bf16", "--no-mlflow"]
    assert main(argv) == 2
    assert "different precisions (bf16 vs fp32)" in capsys.readouterr().err.splitlines()[-1]
    assert main(argv + ["--allow-mixed-precision"]) == 0
    assert "different precisions (bf16 vs fp32)" in capsys.readouterr().err


@pytest.mark.slow
def test_fid_pipeline_bad_inputs(ray_session, tmp_path, tracking_uri, capsys):
    from dctdiff.commands.evaluate_command import main

    np.savez(tmp_path / "samples.npz", images=photo_crops(4, 32))
    np.savez(tmp_path / "narrow.npz", mu=np.zeros(64), sigma=np.eye(64))
    truncated = save_folder(tmp_path / "truncated", photo_crops(3, 32))
    data = (truncated / "002.png").read_bytes()
    (truncated / "002.png").write_bytes(data[: len(data) // 2])
    common = ["--mlflow-uri", tracking_uri]
    cases = [
        (["fid", str(tmp_path / "samples.npz")], "add --save-stats"),
        (["fid", str(tmp_path / "samples.npz"), str(tmp_path / "narrow.npz")], "width mu [64]"),
        (["fid", str(tmp_path / "samples.npz"), str(tmp_path / "missing")], "does not exist"),
        (["fid", str(truncated), str(tmp_path / "samples.npz")], "002.png: corrupt"),
        (["fid", str(tmp_path / "samples.npz"), str(tmp_path / "samples.npz"), "--run-id", "nope"], "not a run"),
        (["reconstruction", str(tmp_path / "samples.npz"), "--block-size", "3"], "multiple of 2 x block size"),
    ]
    for argv, message in cases:
        assert main(argv + common) == 2, argv
        assert message in capsys.readouterr().err.splitlines()[-1], argv


@pytest.mark.slow
def test_reconstruction_pipeline_writes_table_plot_and_logs(ray_session, tmp_path, tracking_uri, reconstruction_rows):
    from mlflow.tracking import MlflowClient

    from dctdiff.evaluation.evaluate_job import DEFAULT_EXPERIMENT, run_reconstruction
    from dctdiff.infra.mlflow_tracking import TrackingOptions

    rows, chosen = run_reconstruction(
        f"photos:{RECONSTRUCTION_IMAGES}",
        block_size=2,
        resolution=32,
        gamma=100.0,
        output=str(tmp_path / "out"),
        batch_size=15,
        tracking=TrackingOptions(tracking_uri, DEFAULT_EXPERIMENT),
    )
    for ray_row, local_row in zip(rows, reconstruction_rows, strict=True):  # the Ray job = the in-process analysis
        assert ray_row.keep == local_row.keep
        assert ray_row.rfid == pytest.approx(local_row.rfid, rel=1e-4)
        assert ray_row.psnr == pytest.approx(local_row.psnr, rel=1e-9)
    assert chosen == choose_keep(rows, 100.0)
    with open(tmp_path / "out" / "reconstruction.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["keep"]) for r in table] == [1, 2, 3, 4]
    assert float(table[2]["rfid"]) == pytest.approx(rows[2].rfid)
    assert (tmp_path / "out" / "reconstruction.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dctdiff-evaluate").experiment_id])
    for row in rows:  # one key per keep, off the step axis
        history = client.get_metric_history(run.info.run_id, f"rfid_keep_{row.keep}")
        assert [(m.step, m.value) for m in history] == [(0, pytest.approx(row.rfid))]
        assert run.data.metrics[f"psnr_keep_{row.keep}"] == pytest.approx(row.psnr)
    assert "rfid" not in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reconstruction")}
    assert artifacts == {
        "reconstruction/reconstruction.csv",
        "reconstruction/reconstruction.png",
        "reconstruction/table.json",
    }
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "reconstruction/table.json", str(tmp_path))).read_text()
    )
    logged = {
        column: [row[i] for row in table["data"]] for i, column in enumerate(table["columns"])
    }  # MLflow's table format
    assert logged["keep"] == [1, 2, 3, 4] and logged["rfid"] == pytest.approx([r.rfid for r in rows])
    assert run.data.tags["mlflow.source.name"] == "dctdiff evaluate" and run.data.tags["mlflow.user"]
    if chosen is not None:
        assert run.data.metrics["chosen_keep"] == chosen


@pytest.mark.slow
def test_reconstruction_and_statistics_are_written_through_uris(ray_session, tmp_path, reconstruction_rows):
    from dctdiff.evaluation.evaluate_job import run_fid, run_reconstruction

    rows, _ = run_reconstruction(
        f"photos:{RECONSTRUCTION_IMAGES}",
        block_size=2,
        resolution=32,
        gamma=100.0,
        output=f"file://{tmp_path}/rec",
        batch_size=15,
        tracking=None,
    )
    with open(tmp_path / "rec" / "reconstruction.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["keep"]) for r in table] == [r.keep for r in reconstruction_rows] == [1, 2, 3, 4]
    assert [float(r["rfid"]) for r in table] == pytest.approx([r.rfid for r in reconstruction_rows], rel=1e-4)
    assert [float(r["psnr"]) for r in table] == pytest.approx([r.psnr for r in reconstruction_rows], rel=1e-9)
    with Image.open(tmp_path / "rec" / "reconstruction.png") as plot:
        assert plot.format == "PNG" and plot.width > 300

    run_fid(["photos:4"], save_stats_to=f"file://{tmp_path}/stats/ref.npz", resolution=32, batch_size=4, tracking=None)
    saved, expected = (
        load_fid_stats(tmp_path / "stats" / "ref.npz"),
        compute_fid_stats(photo_crops(4, 32), device="cpu"),
    )
    np.testing.assert_allclose(saved.mu, expected.mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(saved.sigma, expected.sigma, rtol=1e-4, atol=1e-6)
    assert (saved.images, saved.source) == (4, "photos:4")
    assert list(tmp_path.rglob(".*.tmp")) == []
