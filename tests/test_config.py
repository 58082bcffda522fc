"""Training config: presets carry the paper's values, overrides are typed, bad input is explained."""

from __future__ import annotations

import pytest
import yaml

from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import PRESETS, ConfigError, build_config, config_from_dict, parse_overrides

# docs/ARCHITECTURE.md, "Presets": preset -> (resolution, B, keep, tokens, model size, batch, lr, eta, c)
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
        (
            ["optim.lrr=1"],
            r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\); allowed here: batch_size, lr",
        ),
        (["nope.x=1"], "unknown config key 'nope'"),
        (["data.keep=5"], r"data.keep must be in 1..data.block_size\*\*2 = 1..4"),
        (["data.resolution=30"], "multiple of 2 x block size"),
        (["optim.lr=fast"], "optim.lr must be a float"),
        (["optim.batch_size=2.5"], "optim.batch_size must be an int"),
        (["data.space=latent"], "data.space must be one of 'dct', 'pixel'"),
        (["data.hflip=maybe"], "data.hflip must be true or false"),
        (["data.class_conditional=true"], "num_classes > 0"),
        (["model.size=XXL"], "model.size must be one of"),
        (
            ["model.embed_dim=30"],
            "model.embed_dim .*divisible by 4, got 30: change embed_dim or use pos_embed_init=normal",
        ),
        (["model.pos_embed_init=learned"], "model.pos_embed_init must be one of 'sincos', 'normal'"),
        (["optim=3"], "optim is a section"),
        (["lr"], "must look like section.key=value"),
    ],
)
def test_bad_values_say_how_to_fix_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", overrides=overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="choose one of demo, fmnist, cifar10"):
        build_config("cifar100")
    assert set(PRESETS) >= set(PAPER) | {"demo"}


def test_the_fmnist_preset_gives_both_arms_64_tokens_of_16_values():
    """The DCT vs pixel comparison at equal tokens (issue 21): grey 32x32 with B = 2 and keep 4 is 8x8 tokens
    of 2x2 blocks of 4 coefficients; the pixel arm's patch 4 is 8x8 tokens of 4x4 pixels."""
    for space in ("dct", "pixel"):
        config = build_config("fmnist", overrides=[f"data.space={space}"])
        codec = build_codec(config, eta=250.0, colour="grey")
        assert (codec.num_tokens, codec.token_dim) == (64, 16), space
        model = build_model(config, codec)
        assert 1.4e6 < sum(p.numel() for p in model.parameters()) < 1.6e6  # the measured 1.5 M recipe
    assert config.cadence.sample_count == 64 and config.optim.ema_warmup


def test_parse_overrides_nests_and_parses_scalars():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


# Issue #16: values the config used to accept, which failed minutes later (after retries) or never.
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.lr=inf"], r"optim.lr must be a finite number, got inf: set e.g. optim.lr=0.0002$"),
        (["optim.lr=.nan"], "optim.lr must be a finite number, got nan"),
        (["optim.lr=-1e-4"], r"optim.lr must be > 0, got -0.0001: set e.g. optim.lr=2e-4"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["optim.ema_decay=nan"], "optim.ema_decay must be a finite number, got nan"),
        (["optim.beta2=-inf"], "optim.beta2 must be a finite number, got -inf"),
        (["diffusion.beta_max=inf"], "diffusion.beta_max must be a finite number"),
        (["optim.lr=true"], "optim.lr must be a float, got true: write the number itself"),
        (["optim.batch_size=true"], "optim.batch_size must be an int, got true: write the number itself"),
        (["cadence.max_steps=false"], "cadence.max_steps must be an int, got false"),
        (["cadence.max_steps=.inf"], "cadence.max_steps must be an int, got inf"),
        (
            ["cadence.sampler=bogus"],
            r"cadence.sampler must be one of dpm\+\+2m, dpm\+\+3m, ddim, euler, euler_maruyama, got 'bogus'",
        ),
        (["optim.precision=fp8"], "optim.precision must be one of 'bf16', 'fp16', 'fp32'"),
        (["optim.lr=[1"], r"override 'optim.lr=\[1'.*invalid YAML .*; fix the syntax"),
        (
            ["cadence.fid_every=10", "cadence.fid_samples=3"],
            "cadence.fid_samples must be >= 4 with cadence.fid_every on",
        ),
    ],
)
def test_values_that_cannot_work_are_refused_at_the_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("demo", overrides=overrides)


def test_the_config_accepts_every_sampler_that_sampling_implements():
    from dctdiff.core.samplers import SAMPLERS

    for sampler in SAMPLERS:
        assert build_config("demo", overrides=[f"cadence.sampler={sampler}"]).cadence.sampler == sampler


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim:\n  lr: 1e-4\n  batch_size: [64\n", r"c.yaml line \d+: invalid YAML \(.*\); fix the syntax$"),
        ("optim:\n\tlr: 1e-4\n", r"c.yaml line 2: invalid YAML"),
        (
            "optim: !!python/object/apply:os.system ['echo hi']\n",
            r"c.yaml line 1: could not determine a constructor for the tag .*python/object.*; config YAML holds plain "
            r"values only \(remove the tag\)$",
        ),
    ],
)
def test_bad_yaml_files_are_one_line_errors_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        build_config("demo", [str(path)])
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("name", ["../esc", "..", ".", "", " ", "a/b", "/abs", "a\\b", "x\0y"])
def test_run_names_that_leave_the_storage_folder_are_refused(name):
    from dctdiff.models.config import check_run_name

    with pytest.raises(ConfigError, match=r"--name .* must be one folder name under --storage"):
        check_run_name(name)


def test_good_run_names_pass():
    from dctdiff.models.config import check_run_name

    names = [None, "cifar10-run1", "a..b", "lr_3e-3"]
    assert [check_run_name(n) for n in names] == names


def test_train_command_line_refuses_a_bad_name_and_zero_workers(capsys):
    from dctdiff.commands.train_command import parse_args

    with pytest.raises(ConfigError, match="--name '../esc' must be one folder name"):
        parse_args(["--data", "d", "--name", "../esc"])
    for workers in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--data", "d", "--workers", workers])
        assert "argument --workers: must be" in capsys.readouterr().err
    assert parse_args(["--data", "d", "--workers", "3", "--name", "r1"]).options.resources.workers == 3


def test_sweep_command_line_refuses_a_bad_name_and_zero_workers(tmp_path, capsys):
    from dctdiff.commands.sweep_command import main

    assert main(["--study", "lr", "--data", "d", "--storage", str(tmp_path), "--name", "../esc"]) == 2
    assert "--name '../esc' must be one folder name" in capsys.readouterr().err
    assert main(["--resume", "--storage", str(tmp_path), "--name", ".."]) == 2
    assert "--name '..' must be one folder name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--study", "lr", "--data", "d", "--workers", "0"])
    assert "argument --workers: must be >= 1, got 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_saved_config_with_the_old_schedule_section_names_the_new_key():
    saved = build_config("demo").to_dict()
    saved["schedule"] = saved.pop("cadence")
    with pytest.raises(ConfigError, match="'schedule' was renamed to 'cadence'"):
        config_from_dict(saved)
    with pytest.raises(ConfigError, match="renamed to 'cadence'"):
        build_config("demo", overrides=["schedule.max_steps=3"])
