"""The training step without Ray: exact resume from a checkpoint, batch-split invariance, recipe."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from dctdiff.core.codec import DCTCodec
from dctdiff.core.generation import generate_images
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.models.builders import build_codec, build_model
from dctdiff.models.config import build_config
from dctdiff.training.randomness import draw_step, id_keys
from dctdiff.training.step_metrics import MetricWindow, NonFiniteLossError
from dctdiff.training.trainer import Batch, Trainer, ema_decay_at

ENTROPY = {"Y": [6.471, 3.588, 3.767, 2.411], "Cb": [4.308, 1.315, 1.487, 1.0], "Cr": [4.014, 1.284, 1.435, 1.0]}


def make_trainer(**overrides) -> Trainer:
    torch.manual_seed(0)
    settings = [
        "optim.warmup_steps=3",
        "optim.lr=1e-3",
        "optim.ema_decay=0.9",
        "model.embed_dim=32",
        *[f"{k}={v}" for k, v in overrides.items()],
    ]
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
    expected = [straight.train_step(b).value("loss") for b in batches * 2]

    first = make_trainer()
    losses = [first.train_step(b).value("loss") for b in batches]
    first.train_seconds = 12.5  # what the worker loop counted
    first.save(tmp_path, {"config": first.config.to_dict()})
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 3 and state["rng"] == {"seed": 0, "step": 3}
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
        "manifest.json",
    }

    resumed = make_trainer()
    resumed.load(tmp_path)
    assert resumed.train_seconds == 12.5  # the training clock goes on from the checkpoint
    losses += [resumed.train_step(b).value("loss") for b in batches]
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)
    for a, b in zip(resumed.ema.parameters(), straight.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_per_sample_randomness_makes_the_batch_split_irrelevant(batches):
    """Gradient of the whole batch == mean of the two halves' gradients (what DDP computes)."""
    whole, halves = make_trainer(**{"optim.grad_clip": 0}), make_trainer(**{"optim.grad_clip": 0})
    batch = batches[0]
    shape = tuple(batch.tokens.shape[1:])
    draws = draw_step(0, 5, batch.keys, shape)
    split = [draw_step(0, 5, id_keys(batch.ids[:4]), shape), draw_step(0, 5, id_keys(batch.ids[4:]), shape)]
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
    lrs = [trainer.train_step(b).lr for b in batches]
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


def test_ema_warmup_forgets_the_initial_weights_as_the_closed_form():
    """With optim.ema_warmup the k-th update uses min(decay, (1 + k) / (10 + k)): after n updates of a
    constant model the initial weights keep the product of those decays, not decay**n."""
    trainer = make_trainer(**{"optim.ema_decay": 0.999, "optim.ema_warmup": "true"})
    start = [p.detach().clone() for p in trainer.ema.parameters()]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    for update in range(1, 101):
        trainer._update_ema()
        trainer.step = update
    kept = math.prod(min(0.999, (1 + k) / (10 + k)) for k in range(1, 101))  # ~0.0059 (constant: 0.905)
    for ema, old, new in zip(trainer.ema.parameters(), start, trainer.model.parameters()):
        torch.testing.assert_close(ema, kept * old + (1 - kept) * new)
    assert ema_decay_at(trainer.config.optim, 10**6) == 0.999  # the cap: the configured decay


def test_nan_loss_stops_at_the_logging_step_naming_the_step_and_the_sample(batches):
    trainer, window = make_trainer(), MetricWindow()
    window.add(trainer.train_step(batches[0]))
    tokens = batches[1].tokens.clone()
    tokens[2, 5, 0] = float("inf")  # one coefficient of one row
    window.add(trainer.train_step(Batch(tokens, None, batches[1].ids)))
    window.add(trainer.train_step(batches[2]))
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at step 2 \(samples img-10\)") as error:
        window.reduce(world=1)
    assert error.value.step == 2


def test_the_window_averages_the_steps_on_the_device(batches):
    trainer, window = make_trainer(), MetricWindow()
    results = [trainer.train_step(b) for b in batches]
    for result in results:
        window.add(result)
    metrics = window.reduce(world=1)
    assert len(window) == 0 and metrics["lr"] == results[-1].lr
    for name in ("loss", "grad_norm", "band/dc"):
        assert metrics[name] == pytest.approx(np.mean([r.value(name) for r in results]), rel=1e-6)


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

    with mp.get_context("spawn").Manager() as manager:  # never fork the test process (conftest)
        results = manager.dict()
        mp.spawn(_ranks_agree_worker, args=(str(tmp_path / "store"), perturb, results), nprocs=2)
        outcome = dict(results)
    if perturb:
        assert all("different weights" in outcome[r] for r in (0, 1))
    else:
        assert outcome == {0: "agree", 1: "agree"}


def _gradient_after_one_step(trainer: Trainer, batch: Batch) -> tuple[torch.Tensor, float]:
    """The flat gradient of one train_step (the optimiser step is skipped) and its loss."""
    trainer.optimizer.step = lambda: None
    result = trainer.train_step(batch)
    return torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()]), result.value("loss")


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_four_micro_batches_equal_one_batch_four_times_the_size(batches):
    whole = Batch(torch.cat([b.tokens for b in batches[:2]]), None, [i for b in batches[:2] for i in b.ids])  # 16
    reference = _gradient_after_one_step(make_trainer(**{"optim.grad_clip": 0}), whole)
    accumulated = _gradient_after_one_step(make_trainer(**{"optim.grad_clip": 0, "optim.micro_batches": 4}), whole)
    torch.testing.assert_close(accumulated[0], reference[0], rtol=1e-4, atol=1e-6)
    assert accumulated[1] == pytest.approx(reference[1], rel=1e-6)
    with pytest.raises(ValueError, match="optim.micro_batches 3 must divide the per-worker batch 64"):
        make_trainer(**{"optim.micro_batches": 3})


def test_micro_batches_skip_the_ddp_all_reduce_but_the_last(batches):
    """DDP.no_sync wraps every micro-batch's backward except the last one's."""
    calls: list[str] = []

    class Recorder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args):
            calls.append("forward")
            return self.inner(*args)

        def no_sync(self):
            from contextlib import contextmanager

            @contextmanager
            def context():
                calls.append("no_sync")
                yield
                calls.append("sync")

            return context()

    torch.manual_seed(0)
    config = build_config("demo", overrides=["model.embed_dim=32", "optim.micro_batches=4"])
    codec = build_codec(config, eta=242.0)
    trainer = Trainer(config, codec, build_model(config, codec), ENTROPY, torch.device("cpu"), wrap=Recorder)
    trainer.train_step(batches[0])
    assert calls == ["no_sync", "forward", "sync"] * 3 + ["forward"]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_activation_checkpointing_gives_the_same_gradients(batches):
    plain = _gradient_after_one_step(make_trainer(**{"optim.grad_clip": 0}), batches[0])
    checkpointed_trainer = make_trainer(**{"optim.grad_clip": 0, "model.grad_checkpoint": "true"})
    assert checkpointed_trainer.model.config.grad_checkpoint
    checkpointed = _gradient_after_one_step(checkpointed_trainer, batches[0])
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=1e-5, atol=1e-7)


def _window_worker(rank: int, store_path: str, results) -> None:
    """Two gloo ranks, three steps each; only rank 1 has a NaN loss, at step 2, for its sample r1-b."""
    import torch.distributed as dist

    from dctdiff.training.step_metrics import StepResult

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    window = MetricWindow()
    for step in (1, 2, 3):
        per_sample = torch.tensor([1.0, 2.0]) * (step + rank)
        if rank == 1 and step == 2:
            per_sample[1] = float("nan")
        values = torch.stack([per_sample.mean(), torch.tensor(float(rank))])
        window.add(StepResult(values, ("loss", "grad_norm"), per_sample, [f"r{rank}-a", f"r{rank}-b"], step, 0.1))
    try:
        results[rank] = window.reduce(2)
    except NonFiniteLossError as error:
        results[rank] = (str(error), error.step)
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_stops_both_ranks_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    with mp.get_context("spawn").Manager() as manager:  # never fork the test process (conftest)
        results = manager.dict()
        mp.spawn(_window_worker, args=(str(tmp_path / "store"), results), nprocs=2)
        outcome = dict(results)
    assert outcome[0] == outcome[1]
    message, step = outcome[0]
    assert step == 2 and message.startswith("loss is nan at step 2 (samples r1-b)")


@pytest.mark.slow
def test_compiled_training_repeats_the_eager_losses(batches):
    """model.compile=true (torch.compile of the network, inductor on the CPU): the same losses."""
    eager, compiled = make_trainer(), make_trainer(**{"model.compile": "true"})
    assert compiled.module is not compiled.model  # the compiled wrapper
    expected = [eager.train_step(b).value("loss") for b in batches[:2]]
    losses = [compiled.train_step(b).value("loss") for b in batches[:2]]
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_sampling_gives_the_eager_images():
    """model.compile=true compiles the sampling network too (grids, FID): the same images up to a level."""
    trainer = make_trainer(**{"model.compile": "true"})
    assert trainer.sampling_model is not trainer.ema
    with torch.no_grad():
        for p in trainer.ema.parameters():  # an EMA that is not the zero-initialised output layer
            p.add_(0.02 * torch.randn_like(p))
    eager, compiled = (
        generate_images(model, trainer.codec, trainer.noise_schedule, range(4), nfe=4).int()
        for model in (trainer.ema, trainer.sampling_model)
    )
    assert (compiled - eager).abs().max() <= 1 and eager.float().std() > 10  # real images, not a constant


def test_bf16_autocast_training_stays_close_to_fp32(batches):
    """The GPU default (optim.precision=bf16) run through CPU autocast: losses and gradient norms close
    to float32's (measured: 3e-5 and 0.2% relative)."""
    exact = make_trainer()
    torch.manual_seed(1)
    with torch.no_grad():  # weights away from the zero-initialised output layer, so the network matters
        for p in exact.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    mixed = Trainer(exact.config, exact.codec, copy.deepcopy(exact.model), ENTROPY, exact.device, autocast_on_cpu=True)
    assert mixed.autocast_dtype is torch.bfloat16 and exact.autocast_dtype is None
    steps = [(exact.train_step(b), mixed.train_step(b)) for b in batches]
    for name, tolerance in (("loss", 1e-3), ("grad_norm", 2e-2)):
        expected, got = ([r.value(name) for r in pair] for pair in zip(*steps))
        assert got != expected  # the bf16 matmuls ran
        np.testing.assert_allclose(got, expected, rtol=tolerance)


@pytest.mark.gpu
def test_a_cuda_step_makes_no_host_sync(batches):
    """A train_step on CUDA queues its work without waiting for the device (sync debug mode errors)."""
    torch.manual_seed(0)
    config = build_config("demo", overrides=["model.embed_dim=32", "optim.warmup_steps=3"])
    codec = build_codec(config, eta=242.0)
    trainer = Trainer(config, codec, build_model(config, codec), ENTROPY, torch.device("cuda"))
    trainer.train_step(batches[0])  # warm-up: lazy state creation may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = trainer.train_step(batches[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.values.is_cuda and np.isfinite(result.value("loss"))


@pytest.mark.gpu
def test_cuda_batches_from_rows_equal_the_cpu_batches():
    """The prefetch thread's batch on CUDA (pinned, non-blocking copies, conversion on the device) is the CPU's."""
    from dctdiff.training.device_batches import batch_from_rows
    from dctdiff.training.prefetch import prefetched

    config = build_config("demo", overrides=["model.embed_dim=32"])
    codec = build_codec(config, eta=242.0)
    rows = {"id": np.array([f"img-{i}" for i in range(8)], dtype=object), "label": np.arange(8),
            "coefficients": codec.analyze(photo_crops(8, 32, seed=3)).numpy().astype(np.float16)}  # fmt: skip
    cpu = batch_from_rows(rows, config, codec, "coefficients", torch.device("cpu"))
    device = torch.device("cuda", torch.cuda.current_device())
    made = (batch_from_rows(r, config, codec, "coefficients", device) for r in [rows])
    (cuda,) = prefetched(made, device=device)  # made in the prefetch thread, as in the worker loop
    torch.cuda.synchronize()
    assert cuda.tokens.is_cuda and cuda.keys.is_cuda
    assert torch.equal(cuda.keys.cpu(), cpu.keys) and list(cuda.ids) == list(cpu.ids)
    torch.testing.assert_close(cuda.tokens.cpu(), cpu.tokens)


def test_only_kept_coefficients_cross_to_the_device(monkeypatch):
    """keep = 2 of B^2 = 4: the values sent to the device hold 2 coefficients per block (half the bytes),
    and the tokens equal those the codec makes from all stored coefficients."""
    from dctdiff.training import device_batches

    config = build_config("demo", overrides=["model.embed_dim=32", "data.keep=2"])
    codec = build_codec(config, eta=242.0)
    coefficients = codec.analyze(photo_crops(4, 32, seed=5)).numpy().astype(np.float16)  # [4, L, 6, 4]
    rows = {"id": np.array([f"img-{i}" for i in range(4)], dtype=object), "label": np.arange(4),
            "coefficients": coefficients}  # fmt: skip
    moved = []
    to_device = device_batches._to_device
    monkeypatch.setattr(device_batches, "_to_device", lambda t, d: moved.append(t.shape) or to_device(t, d))
    batch = device_batches.batch_from_rows(rows, config, codec, "coefficients", torch.device("cpu"))
    assert codec.keep == 2 and coefficients.shape[-1] == 4
    assert moved[0] == (*coefficients.shape[:-1], 2)
    torch.testing.assert_close(
        batch.tokens, codec.tokens_from_coefficients(torch.from_numpy(coefficients)), rtol=0, atol=0
    )


def test_logged_metrics_are_float32_under_bf16_autocast(batches):
    """A bf16-autocast step (CPU autocast here, the GPU's default) hands the metric window float32 values,
    and its band MSEs equal those of the same step's losses recomputed in float64 from the band masks."""
    trainer = make_trainer()
    mixed = Trainer(trainer.config, trainer.codec, trainer.model, ENTROPY, trainer.device, autocast_on_cpu=True)
    result = mixed.train_step(batches[0])
    assert result.values.dtype == torch.float32 and result.per_sample.dtype == torch.float32
    window = MetricWindow()
    window.add(result)
    metrics = window.reduce(world=1)
    bands = {name: metrics[f"band/{name}"] for name in ("luma", "chroma", "dc", "ac")}
    # the band means of an 8-sample batch: float32 resolution, not bf16's 3 significant digits
    assert all(value > 0 for value in bands.values())
    assert metrics["band/mse"] == pytest.approx(
        (16 * bands["luma"] + 8 * bands["chroma"]) / 24, rel=1e-5
    )  # 16 luma and 8 chroma dims of 24: the band means must combine exactly
