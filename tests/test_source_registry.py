"""The source registry (dctdiff.data.sources.SOURCES): the kinds each job accepts, and a kind registered
here, with no other change, read by `dctdiff prepare`, by the evaluation image sets and listed in both
commands' --help (docs/ARCHITECTURE.md, "Extending")."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dctdiff.commands.evaluate_command import parse_args as evaluate_args
from dctdiff.commands.prepare_command import build_parser as prepare_parser
from dctdiff.core.codec import DCTCodec
from dctdiff.data.image_decoding import ImageRejected, decode_payload
from dctdiff.data.prepare_job import PrepareConfig, run_prepare
from dctdiff.data.shards import read_shard, shard_files
from dctdiff.data.sources import (
    EVALUATE,
    OPTIONAL,
    PREPARE,
    SOURCES,
    ImageSource,
    Item,
    Loaded,
    SourceOptions,
    open_source,
    register_source,
    source_forms,
)
from dctdiff.evaluation.image_sets import ImageSetError, open_image_set

TOY_SIZE = 32
TOY_HELP = "seeded random test images (one PNG, one grey)"


def toy_pixels(count: int) -> np.ndarray:
    """What the toy source holds: uint8 [count, 32, 32, 3] from a seeded generator, image 1 grey (R = G = B)."""
    images = np.random.default_rng(7).integers(0, 256, (count, TOY_SIZE, TOY_SIZE, 3), dtype=np.uint8)
    images[1] = images[1, ..., :1]
    return images


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ToySource(ImageSource):
    """``toy[:N]``: N (default 4) images of :func:`toy_pixels`; image 0 as PNG bytes, image 1 as a grey
    [H, W] array, the rest as RGB arrays (the three kinds of payload); labels alternate 0, 1."""

    kind = "toy"
    path = OPTIONAL
    help = TOY_HELP
    jobs = frozenset({PREPARE, EVALUATE})

    def __init__(self, count: int) -> None:
        self.count = count
        self.spec = f"toy:{count}"

    @classmethod
    def from_spec(cls, path: str, options: SourceOptions) -> ToySource:
        return cls(int(path) if path else 4)

    def items(self) -> list[Item]:
        return [Item(f"toy/{i:03d}", i) for i in range(self.count)]

    def class_names(self) -> list[str] | None:
        return ["even", "odd"]

    def load(self, items: list[Item]) -> list[Loaded]:
        images = toy_pixels(self.count)
        payloads = {0: png(images[0]), 1: images[1, ..., 0]}
        return [Loaded(item.id, item.ref % 2, payloads.get(item.ref, images[item.ref])) for item in items]


@pytest.fixture
def toy_kind():
    """``ToySource`` registered for the test, removed after it."""
    assert ToySource.kind not in SOURCES
    register_source(ToySource)
    yield ToySource
    del SOURCES[ToySource.kind]


def test_each_job_accepts_the_kinds_it_did():
    assert source_forms(PREPARE) == "folder:PATH, cifar10:PATH, fashion-mnist[:PATH], photos or parquet:PATH"
    assert source_forms(EVALUATE) == "cifar10:PATH, fashion-mnist[:PATH] or parquet:PATH"


def test_one_decode_of_every_payload():
    image = toy_pixels(2)
    np.testing.assert_array_equal(decode_payload(png(image[0]), None), image[0])
    np.testing.assert_array_equal(decode_payload(image[1, ..., 0], None), image[1])
    np.testing.assert_array_equal(decode_payload(image[0], None), image[0])
    with pytest.raises(ImageRejected, match="unreadable: gone"):
        decode_payload(ImageRejected("unreadable", "gone"), None)


def test_a_registered_kind_is_listed_in_both_helps(toy_kind, capsys):
    prepare_help = prepare_parser().format_help()
    assert "toy[:PATH]" in prepare_help and TOY_HELP in prepare_help
    with pytest.raises(SystemExit):
        evaluate_args(["--help"])
    evaluate_help = capsys.readouterr().out
    assert "toy[:PATH]" in evaluate_help and TOY_HELP in evaluate_help


def test_a_registered_kind_is_an_evaluation_image_set(toy_kind):
    expected = toy_pixels(5)
    image_set = open_image_set("toy:5")
    assert (image_set.count, image_set.size) == (5, (TOY_SIZE, TOY_SIZE))
    np.testing.assert_array_equal(image_set.load(), expected)
    np.testing.assert_array_equal(open_image_set("toy:5", limit=2).load(), expected[:2])
    resized = open_image_set("toy:5", resolution=16).load()
    halved = [np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX)) for image in expected]
    np.testing.assert_array_equal(resized, np.stack(halved))  # 32 -> 16: prepare's fit halves with a box filter


def test_a_kind_not_accepted_by_a_job_is_refused_there(toy_kind, monkeypatch):
    monkeypatch.setattr(ToySource, "jobs", frozenset({PREPARE}))
    with pytest.raises(ImageSetError, match="image set toy:5 does not exist"):
        open_image_set("toy:5")
    assert open_source("toy:2", resolution=32).items()[1].id == "toy/001"
    with pytest.raises(ValueError, match=r"--split applies to cifar10 and fashion-mnist sources only, not to 'toy'"):
        open_source("toy:2", resolution=32, split="test")


@pytest.mark.slow
def test_a_registered_kind_is_prepared(toy_kind, ray_session, tmp_path):
    output = tmp_path / "prepared"
    report = run_prepare(PrepareConfig("toy:5", str(output), TOY_SIZE, 2, shard_rows=2, progress=False))
    assert report["source"] == "toy:5" and report["images"]["written"] == 5
    ids, labels, coefficients = zip(*(read_shard(uri) for uri in shard_files(str(output))))
    assert [i for part in ids for i in part] == [f"toy/{i:03d}" for i in range(5)]
    assert np.concatenate(labels).tolist() == [0, 1, 0, 1, 0]
    reference = DCTCodec(TOY_SIZE, 2, 4, dtype=torch.float64).analyze(toy_pixels(5)).numpy()
    np.testing.assert_allclose(np.concatenate(coefficients).astype(np.float64), reference, rtol=1e-3, atol=1e-2)
    assert json.loads((output / "labels.json").read_text()) == {"classes": ["even", "odd"]}
