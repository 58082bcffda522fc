"""The training step without Ray: exact resume from a checkpoint, batch-split invariance, recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dctdiff.core.codec import DCTCodec
from dctdiff.training.config import build_config
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.training.trainer import Batch, Trainer, build_codec, build_model, draw_step

ENTROPY = {"Y": [6.471, 3.588, 3.767, 2.411], "Cb": [4.308, 1.315, 1.487, 1.0], "Cr": [4.014, 1.284, 1.435, 1.0]}


def make_trainer(**overrides) -> Trainer:
    torch.manual_seed(0)
    settings = ["optim.warmup_steps=3", "optim.lr=1e-3", "optim.ema_decay=0.9", "model.embed_dim=32", *[
        f"{k}={v}" for k, v in overrides.items()
    ]]
    config = build_config("demo", overrides=settings)
    codec = build_codec(config, eta=242.0)
    return Trainer(config, codec, build_model(config, codec), ENTROPY, torch.device("cpu"))


@pytest.fixture(scope="module")
def batches():
    images = photo_crops(24, 32, seed=3)
    tokens = DCTCodec(32, 2, 4, 242.0).encode(images)
    ids = [f"img-{i}" for i in range(24)]
    return [Batch(tokens[i : i + 8], None, ids[i : i + 8]) for i in range(0, 24, 8)]


def test_resume_from_checkpoint_repeats_the_uninterrupted_run(tmp_path, batches):
    straight = make_trainer()
    expected = [straight.train_step(b)["loss"] for b in batches * 2]

    first = make_trainer()
    losses = [first.train_step(b)["loss"] for b in batches]
    first.save(tmp_path, {"config": first.config.to_dict()})
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 3 and state["rng"] == {"seed": 0, "step": 3}
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "manifest.json"
    }

    resumed = make_trainer()
    resumed.load(tmp_path)
    losses += [resumed.train_step(b)["loss"] for b in batches]
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)
    for a, b in zip(resumed.ema.parameters(), straight.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_per_sample_randomness_makes_the_batch_split_irrelevant(batches):
    """Gradient of the whole batch == mean of the two halves' gradients (what DDP computes)."""
    whole, halves = make_trainer(**{"optim.grad_clip": 0}), make_trainer(**{"optim.grad_clip": 0})
    batch = batches[0]
    draws = draw_step(0, 5, batch.ids, tuple(batch.tokens.shape[1:]))
    split = [draw_step(0, 5, batch.ids[:4], tuple(batch.tokens.shape[1:])), draw_step(0, 5, batch.ids[4:], tuple(batch.tokens.shape[1:]))]
    torch.testing.assert_close(torch.cat([split[0].eps, split[1].eps]), draws.eps)
    torch.testing.assert_close(torch.cat([split[0].t, split[1].t]), draws.t)

    def gradient(trainer: Trainer, b: Batch) -> torch.Tensor:
        trainer.optimizer.step = lambda: None  # look at the gradient only
        trainer.train_step(b)
        trainer.step = 0
        return torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])

    full = gradient(whole, batch)
    part = [
        gradient(halves, Batch(batch.tokens[:4], None, batch.ids[:4])),
        gradient(halves, Batch(batch.tokens[4:], None, batch.ids[4:])),
    ]
    torch.testing.assert_close((part[0] + part[1]) / 2, full, rtol=1e-4, atol=1e-6)


def test_recipe_warmup_weight_decay_and_ema(batches):
    trainer = make_trainer()
    lrs = [trainer.train_step(b)["lr"] for b in batches]
    np.testing.assert_allclose(lrs, [1e-3 * 2 / 3, 1e-3, 1e-3])  # linear warm-up over 3 steps, then flat
    groups = trainer.optimizer.param_groups
    assert groups[0]["weight_decay"] == 0.03 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["betas"] == (0.99, 0.99)
    assert trainer.model.pos_embed in groups[1]["params"]  # no decay on pos_embed, biases, norms


def test_ema_follows_the_closed_form():
    trainer = make_trainer()
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer._update_ema()
    for ema, old, new in zip(trainer.ema.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new)


def test_nan_loss_stops_with_the_step_number(batches):
    trainer = make_trainer()
    bad = Batch(torch.full_like(batches[0].tokens, float("nan")), None, batches[0].ids)
    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.train_step(bad)


def test_pixel_space_and_ebfr_switches():
    pixel = make_trainer(**{"data.space": "pixel"})
    assert pixel.codec.token_dim == 12 and pixel.loss_fn.weights is None
    plain = make_trainer(**{"diffusion.ebfr": "false"})
    assert plain.loss_fn.weights is None
    weighted = make_trainer()
    assert weighted.loss_fn.weights.shape == (24,)


def _ranks_agree_worker(rank: int, store_path: str, perturb: bool, results) -> None:
    import torch.distributed as dist

    from dctdiff.training.worker_loop import check_ranks_agree

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    if perturb and rank == 1:
        with torch.no_grad():
            model.bias[0] += 1e-6
    try:
        check_ranks_agree(model, 2)
        results[rank] = "agree"
    except RuntimeError as error:
        results[rank] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("perturb", [False, True])
def test_the_end_of_training_check_finds_ranks_with_different_weights(tmp_path, perturb):
    """Two gloo ranks with the same weights pass; one weight off by 1e-6 on one rank fails on both."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ranks_agree_worker, args=(str(tmp_path / "store"), perturb, results), nprocs=2)
        outcome = dict(results)
    if perturb:
        assert all("different weights" in outcome[r] for r in (0, 1))
    else:
        assert outcome == {0: "agree", 1: "agree"}
