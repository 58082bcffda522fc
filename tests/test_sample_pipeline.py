"""pipelines/sample.py: seeds decide the images whatever the worker count; our and published checkpoints."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from dctdiff.commands.sample_command import main
from dctdiff.core.generation import generate_images
from dctdiff.evaluation.sample_job import SamplingSpec, load_sampler, run
from dctdiff.models.builders import build_codec, build_model, build_noise_schedule
from dctdiff.models.checkpoints import newest_checkpoint
from dctdiff.models.config import build_config
from dctdiff.training.trainer import Trainer
from tests.image_checks import assert_equal_up_to_rounding

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a tiny class-conditional model (untrained: sampling is deterministic all the same)."""
    torch.manual_seed(0)
    config = build_config("demo", overrides=["model.embed_dim=32", "data.class_conditional=true", "data.num_classes=3"])
    codec = build_codec(config, eta=242.0)
    trainer = Trainer(config, codec, build_model(config, codec), None, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("run") / "checkpoint_000"
    trainer.save(folder, {"config": config.to_dict(), "eta": 242.0, "stats": {}})
    return folder


def test_same_seeds_same_images_with_one_or_two_workers(ray_module, checkpoint, tmp_path):
    spec = SamplingSpec(
        str(checkpoint.parent), sampler="dpm++2m", nfe=3, labels=(0, 2), batch_size=2, guidance_scale=2.0
    )
    one = run(spec, 5, str(tmp_path / "one"), seed_start=10, workers=1, progress=False)
    two = run(spec, 5, str(tmp_path / "two"), seed_start=10, workers=2, progress=False)
    assert_equal_up_to_rounding(one, two)  # Ray Data may batch the seeds differently: rounding near .5 moves
    # and equal to sampling in-process, seed by seed
    model, codec, schedule, _ = load_sampler(spec, torch.device("cpu"))
    direct = generate_images(model, codec, schedule, list(range(10, 15)), "dpm++2m", 3, labels=[0, 2, 0, 2, 0],
                             guidance_scale=2.0).numpy()  # fmt: skip
    assert_equal_up_to_rounding(one, direct)
    saved = np.load(tmp_path / "two" / "images.npz")
    np.testing.assert_array_equal(saved["images"], one)
    assert saved["seeds"].tolist() == [10, 11, 12, 13, 14] and saved["labels"].tolist() == [0, 2, 0, 2, 0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / "000012.png")), one[2])


def test_actor_plan_takes_the_clusters_gpus_unless_told():
    from dctdiff.infra.ray_cluster import plan_gpu_actors

    assert plan_gpu_actors(None, None, 0.0) == (1, 0.0)  # a CPU cluster: one actor
    assert plan_gpu_actors(None, None, 2.0) == (2, 1.0)  # one actor per GPU
    assert plan_gpu_actors(None, 0.0, 2.0) == (1, 0.0)  # an explicit 0: CPUs on a GPU cluster
    assert plan_gpu_actors(3, 0.0, 2.0) == (3, 0.0)
    assert plan_gpu_actors(None, 0.5, 2.0) == (4, 0.5)
    assert plan_gpu_actors(1, None, 8.0) == (1, 1.0)


def test_an_actor_uses_only_a_gpu_it_reserved(monkeypatch):
    """Ray leaves CUDA_VISIBLE_DEVICES unset for an actor without GPUs: CUDA may be visible all the same."""
    import ray

    from dctdiff.infra.ray_cluster import reserved_device

    for gpu_ids, cuda, expected in (([], True, "cpu"), ([0], True, "cuda"), ([0], False, "cpu"), ([], False, "cpu")):
        monkeypatch.setattr(ray, "get_gpu_ids", lambda ids=gpu_ids: ids)
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert reserved_device().type == expected, (gpu_ids, cuda)


FAKE_GPU_CLUSTER = """
import json, sys
import ray
from dctdiff.evaluation.sample_job import SamplingSpec, run
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.ray_cluster import init_ray

configure_logging("INFO")
init_ray(num_cpus=4, num_gpus=2)  # a fake 2-GPU cluster: Ray schedules the GPUs, torch has no CUDA
spec = SamplingSpec(sys.argv[1], sampler="euler_maruyama", nfe=3, batch_size=2)
default = run(spec, 5, sys.argv[2] + "/default", seed_start=10, progress=False)
on_cpus = run(spec, 5, sys.argv[2] + "/cpus", seed_start=10, gpus_per_worker=0, progress=False)
print(json.dumps({"default": default.tolist(), "cpus": on_cpus.tolist()}))
"""


def test_a_gpu_cluster_gets_one_actor_per_gpu_and_the_same_images(checkpoint, tmp_path):
    """On a (fake) 2-GPU cluster the default is 2 actors with a GPU each, `--gpus-per-worker 0` one actor on
    CPUs; both give the images of in-process sampling of the same seeds (Euler-Maruyama: per-step noise)."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FAKE_GPU_CLUSTER), str(checkpoint), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 sampling actor(s), 1 GPU and" in result.stderr and "1 sampling actor(s), 0 GPU and" in result.stderr
    images = {name: np.asarray(value, dtype=np.uint8) for name, value in json.loads(result.stdout).items()}
    model, codec, schedule, _ = load_sampler(SamplingSpec(str(checkpoint)), torch.device("cpu"))
    direct = generate_images(model, codec, schedule, list(range(10, 15)), "euler_maruyama", 3).numpy()
    assert_equal_up_to_rounding(images["default"], direct)
    assert_equal_up_to_rounding(images["cpus"], direct)


def test_published_checkpoint_samples_with_preset_codec(ray_module, tmp_path):
    """A .pth with the published module names (weights_only load) samples through the preset's codec, with the
    preset's sampler when none is given."""
    torch.manual_seed(1)
    config = build_config(
        "demo", overrides=["model.embed_dim=128", "model.num_heads=2", "data.eta=242.0"]
    )  # head width 64
    codec = build_codec(config, 242.0)
    model = build_model(config, codec)
    path = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), path)
    spec = SamplingSpec(str(path), preset="demo", overrides=("data.eta=242.0",), nfe=2, batch_size=4)
    images = run(spec, 4, str(tmp_path / "out"), workers=1, progress=False)
    assert config.cadence.sampler == "euler_maruyama"
    expected = generate_images(
        model.eval(), codec, build_noise_schedule(config), [0, 1, 2, 3], "euler_maruyama", 2
    ).numpy()
    assert_equal_up_to_rounding(images, expected)


def test_bad_checkpoints_fail_with_a_message(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        newest_checkpoint(str(tmp_path))
    assert main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err
    torch.save(
        build_model(build_config("demo"), build_codec(build_config("demo"), 1.0)).state_dict(), tmp_path / "m.pth"
    )
    assert main(["--checkpoint", str(tmp_path / "m.pth"), "--output", str(tmp_path / "o"), "--preset", "celeba64"]) == 2
    assert "expects 64 tokens of dim 24" in capsys.readouterr().err
