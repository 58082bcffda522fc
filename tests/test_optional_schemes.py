"""Schemes served by an optional package fail with one line naming the package (no raw ImportError)."""

from __future__ import annotations

import importlib.util

import pytest

from dctdiff.infra import storage


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is not None, reason="huggingface_hub is installed")
def test_hf_uri_without_huggingface_hub_names_the_package():
    with pytest.raises(ValueError, match=r"hf:// needs huggingface_hub; install it \(pip install huggingface_hub\)"):
        storage.resolve("hf://datasets/user/data/train.parquet")
