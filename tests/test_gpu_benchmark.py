"""benchmarks/gpu.py: it runs where only PyTorch and a few small wheels are installed (no Ray, MLflow or
pyarrow), its CPU smoke run gives every row of the table, one failing row does not cost the others, and
MFU uses a peak only for a device it knows by its exact name. ``pytest -m gpu`` runs on such a machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "mlflow", "pyarrow")  # not on the GPU machine: importing any of them must fail there too
BLOCK = f"import sys\nsys.modules.update({{name: None for name in {ABSENT!r}}})  # import of these raises ImportError\n"
RUN = (
    BLOCK + "sys.argv = ['gpu'] + sys.argv[1:]\nimport runpy\nrunpy.run_module('benchmarks.gpu', run_name='__main__')\n"
)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def table_rows(text: str) -> dict[str, str]:
    """{measurement: images/s cell} of a table benchmarks.gpu wrote."""
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines()[4:]}


@pytest.mark.slow
def test_quick_run_needs_no_ray_mlflow_or_pyarrow_and_writes_the_table(tmp_path):
    from dctdiff.core.samplers import SAMPLERS

    table = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "-c", RUN, "--quick", "--device", "cpu", "--output", str(table)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = table.read_text().splitlines()
    assert lines[0] == "device: cpu" and lines[2] == "| measurement | images/s | MFU |"
    rows = {name: float(rate.replace(",", "")) for name, rate in table_rows(table.read_text()).items()}
    expected = {"codec encode 32x32", "codec decode 32x32"}
    expected |= {f"sample cifar10 {s} {p} eager nfe 2" for s in SAMPLERS for p in ("bf16", "fp32")}
    expected |= {
        f"train {preset} {space} tiny eager {shape} b{batch}"
        for preset, batch, shapes in (("cifar10", 8, ("64x24", "256x12")), ("ffhq256", 2, ("1024x48", "4096x48")))
        for space, shape in zip(("dct", "pixel"), shapes)
    }
    assert set(rows) == expected and all(rate > 0 for rate in rows.values())
    assert done.stdout.strip().endswith(lines[-1])  # the table is printed too


def test_a_failing_row_is_tabled_and_the_next_still_runs(tmp_path, caplog):
    """Before: one exception (e.g. no C compiler for Triton's compiled rows) ended the script and lost
    every later row."""
    from benchmarks.gpu import Table

    table = Table("device: test", str(tmp_path / "gpu.md"))

    def broken():
        raise RuntimeError("Failed to find C compiler.\nPlease specify via CC")

    table.add("train cifar10 dct compiled", broken)
    table.add("codec 32x32", lambda: [("codec encode 32x32", 1234.5, "")])
    assert table.failures == 1
    rows = table_rows((tmp_path / "gpu.md").read_text())
    assert rows == {"train cifar10 dct compiled": "failed", "codec encode 32x32": "1,234.5"}
    assert "| failed | failed: RuntimeError: Failed to find C compiler. Please specify via CC |" in table.markdown()
    assert "train cifar10 dct compiled failed: RuntimeError" in caplog.text


def test_the_peak_table_matches_exact_device_names_only():
    """Before: a name substring ("H100" in an H100 PCIe gave the SXM's 989; "L4" matched an L40)."""
    from benchmarks.peaks import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 NVL") == 835.0 and peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB") == peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert peak_tflops("NVIDIA L4") == 121.0 and peak_tflops("NVIDIA L40S") == 362.0
    for unknown in ("NVIDIA L40", "NVIDIA H100", "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB"):
        assert peak_tflops(unknown) is None, unknown  # no MFU rather than a guess


def test_the_training_rows_are_fed_through_the_worker_loops_input_path():
    """The rows' batches are ``batch_from_rows`` of stored shard rows: tokens = the float16 coefficients
    with keep m, divided by eta (not random tokens made on the host), ids hashed by ``id_keys``."""
    import numpy as np
    import torch

    from benchmarks.gpu import shard_rows, training_batches
    from dctdiff.models.builders import build_codec
    from dctdiff.models.config import build_config
    from dctdiff.training.randomness import id_keys

    config = build_config("cifar10", overrides=["optim.batch_size=4"])
    codec = build_codec(config, eta=config.data.eta)
    rows, column = shard_rows(codec, 4)
    batch = next(training_batches(config, codec, 4, torch.device("cpu")))
    assert column == "coefficients" and rows[column].dtype == np.float16
    kept = torch.from_numpy(rows[column].astype(np.float32))[..., : config.data.keep] / config.data.eta
    torch.testing.assert_close(batch.tokens, kept.flatten(2))  # [n, L, 6 m]: block-major token
    assert torch.equal(batch.keys, id_keys(np.array([f"img-{i}" for i in range(4)])))


@pytest.mark.gpu
def test_on_cuda_the_training_rows_come_from_the_prefetch_thread():
    import threading

    import torch

    import benchmarks.gpu as gpu
    from dctdiff.models.builders import build_codec
    from dctdiff.models.config import build_config

    config = build_config("cifar10", overrides=["optim.batch_size=4"])
    codec = build_codec(config, eta=config.data.eta)
    device = torch.device("cuda", torch.cuda.current_device())
    threads = []
    original = gpu.batch_from_rows

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    gpu.batch_from_rows = spy
    try:
        batches = gpu.training_batches(config, codec, 4, device)
        cuda = next(batches)
        batches.close()
    finally:
        gpu.batch_from_rows = original
    cpu = next(gpu.training_batches(config, codec, 4, torch.device("cpu")))
    assert threads and set(threads) == {"dctdiff-prefetch"} and cuda.tokens.is_cuda and cuda.keys.is_cuda
    torch.testing.assert_close(cuda.tokens.cpu(), cpu.tokens)


def test_pytest_m_gpu_collects_without_ray_mlflow_or_pyarrow(tmp_path):
    """A GPU machine with only PyTorch and pytest: ``pytest -m gpu`` collects the gpu tests (before: every
    test module that imports Ray, MLflow or pyarrow was a collection error)."""
    collect = (
        BLOCK
        + "import pytest\nsys.exit(pytest.main(['--collect-only', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', 'tests']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", collect], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = {line.split("::")[-1] for line in done.stdout.splitlines() if "::" in line}
    assert {"test_a_cuda_step_makes_no_host_sync", "test_cuda_batches_from_rows_equal_the_cpu_batches",
            "test_on_cuda_the_training_rows_come_from_the_prefetch_thread"} <= collected  # fmt: skip
    assert "error" not in done.stdout.lower()
