"""Training config: presets carry the paper's values, overrides are typed, bad input is explained."""

from __future__ import annotations

import pytest
import yaml

from dctdiff.training.config import ConfigError, PRESETS, build_config, config_from_dict, parse_overrides

# DESIGN.md §7: preset -> (resolution, B, keep, tokens, model size, batch, lr, eta, c)
PAPER = {
    "cifar10": (32, 2, 4, 64, "M", 256, 2e-4, 242.382, 4.0),
    "celeba64": (64, 2, 4, 256, "S", 256, 2e-4, 244.925, 4.0),
    "imagenet64": (64, 2, 4, 256, "M", 1024, 3e-4, 247.125, 4.0),
    "ffhq128": (128, 4, 9, 256, "S", 256, 2e-4, 480.25, 4.0),
    "ffhq256": (256, 4, 8, 1024, "M", 256, 2e-4, 485.0, 4.0),
    "ffhq512": (512, 8, 18, 1024, "M", 128, 1e-4, 969.5, 12.0),
    "afhq512": (512, 8, 18, 1024, "M", 128, 1e-4, 928.0, 12.0),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_hold_the_paper_settings(name):
    res, block, keep, tokens, size, batch, lr, eta, c = PAPER[name]
    config = build_config(name)
    d = config.data
    assert (d.resolution, d.block_size, d.keep, d.eta) == (res, block, keep, eta)
    assert (d.resolution // (2 * block)) ** 2 == tokens
    assert (config.model.size, config.optim.batch_size, config.optim.lr) == (size, batch, lr)
    assert config.diffusion.snr_scale == c
    # common recipe
    o = config.optim
    assert (o.weight_decay, o.beta1, o.beta2, o.warmup_steps, o.ema_decay) == (0.03, 0.99, 0.99, 5000, 0.9999)
    assert config.data.class_conditional == (name == "imagenet64")


def test_overrides_are_typed_and_layered(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 5e-4, "batch_size": 32}, "diffusion": {"ebfr": False}}))
    config = build_config("cifar10", [str(path)], ["optim.lr=1e-5", "data.keep=3", "data.hflip=off", "data.eta=null"])
    assert config.optim.lr == 1e-5 and config.optim.batch_size == 32
    assert config.data.keep == 3 and config.data.hflip is False and config.data.eta is None
    assert config.diffusion.ebfr is False
    # the resolved config round-trips through its saved form
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config
    assert config.flat()["optim.lr"] == 1e-5


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'; allowed here: batch_size, lr"),
        (["nope.x=1"], "unknown config key 'nope'"),
        (["data.keep=5"], r"data.keep must be in 1..data.block_size\*\*2 = 1..4"),
        (["data.resolution=30"], "multiple of 2 x block size"),
        (["optim.lr=fast"], "optim.lr must be a float"),
        (["optim.batch_size=2.5"], "optim.batch_size must be an int"),
        (["data.space=latent"], "data.space must be one of 'dct', 'pixel'"),
        (["data.hflip=maybe"], "data.hflip must be true or false"),
        (["data.class_conditional=true"], "num_classes > 0"),
        (["model.size=XXL"], "model.size must be one of"),
        (["model.embed_dim=30"], "model.embed_dim .*divisible by 4, got 30: change embed_dim or use pos_embed_init=normal"),
        (["model.pos_embed_init=learned"], "model.pos_embed_init must be one of 'sincos', 'normal'"),
        (["optim=3"], "optim is a section"),
        (["lr"], "must look like section.key=value"),
    ],
)
def test_bad_values_say_how_to_fix_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", overrides=overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="choose one of demo, cifar10"):
        build_config("cifar100")
    assert set(PRESETS) >= set(PAPER) | {"demo"}


def test_parse_overrides_nests_and_parses_scalars():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
