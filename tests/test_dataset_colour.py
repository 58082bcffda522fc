"""load_dataset_info on the colour mode and the pixel column: what a training run reads from a prepare
output, checked before Ray Train starts (docs/ARCHITECTURE.md, "Shards", "Training")."""

from __future__ import annotations

import numpy as np
import pytest

from dctdiff.data.bundled_photos import photo_crops
from dctdiff.models.builders import build_codec, checkpoint_codec
from dctdiff.models.config import ConfigError, build_config
from dctdiff.training.dataset_info import load_dataset_info
from tests.prepared import write_prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prepared"), photo_crops(8, 32, seed=1))


def test_pixel_space_without_stored_pixels_is_refused(prepared):
    config = build_config("demo", overrides=["data.space=pixel"])
    with pytest.raises(ValueError, match="prepare with --store-pixels$"):
        load_dataset_info(str(prepared), config)
    info = load_dataset_info(str(prepared), build_config("demo"))
    assert (info.column, info.colour) == ("coefficients", "ycbcr420")


def test_data_colour_follows_the_shards_or_must_agree(prepared):
    for colour in ("auto", "ycbcr420"):
        assert (
            load_dataset_info(str(prepared), build_config("demo", overrides=[f"data.colour={colour}"])).colour
            == "ycbcr420"
        )
    with pytest.raises(ValueError, match="prepared with --colour ycbcr420.*data.colour=grey"):
        load_dataset_info(str(prepared), build_config("demo", overrides=["data.colour=grey"]))
    with pytest.raises(ConfigError, match="data.colour must be one of ycbcr420, grey"):
        build_config("demo", overrides=["data.colour=rgb"])


def test_codecs_of_the_colour_modes():
    config = build_config("demo")
    assert build_codec(config, 1.0, "grey").token_dim == 16 and build_codec(config, 1.0).token_dim == 24
    pixel = build_config("demo", overrides=["data.space=pixel"])
    assert build_codec(pixel, 1.0, "grey").token_dim == 4 and build_codec(pixel, 1.0).token_dim == 12
    assert checkpoint_codec(config, {"eta": 2.0}).layout.planes == ("Y", "Cb", "Cr")  # before the colour field
    assert checkpoint_codec(config, {"eta": 2.0, "colour": "grey"}).layout.planes == ("Y",)
    grey = np.zeros((1, 32, 32, 3), np.uint8)
    assert build_codec(build_config("demo", overrides=["data.colour=grey"]), 1.0).encode(grey).shape == (1, 64, 16)
