"""benchmarks/gpu.py: it runs where only PyTorch and a few small wheels are installed (no Ray, MLflow or
pyarrow), and its CPU smoke run gives every row of the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "mlflow", "pyarrow")  # not on the GPU machine: importing any of them must fail there too
RUN = (
    "import runpy, sys\n"
    f"sys.modules.update({{name: None for name in {ABSENT!r}}})  # import of these raises ImportError\n"
    "sys.argv = ['gpu'] + sys.argv[1:]\n"
    "runpy.run_module('benchmarks.gpu', run_name='__main__')\n"
)


@pytest.mark.slow
def test_quick_run_needs_no_ray_mlflow_or_pyarrow_and_writes_the_table(tmp_path):
    table = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, "--quick", "--device", "cpu", "--output", str(table)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = table.read_text().splitlines()
    assert lines[0] == "device: cpu" and lines[2] == "| measurement | images/s | MFU |"
    rows = {line.split(" | ")[0].lstrip("| "): float(line.split(" | ")[1].replace(",", "")) for line in lines[4:]}
    expected = {"codec encode 32x32", "codec decode 32x32", "sample cifar10 bf16 nfe 2", "sample cifar10 fp32 nfe 2"}
    expected |= {
        f"train {preset} {space} tiny eager {shape} b{batch}"
        for preset, batch, shapes in (("cifar10", 8, ("64x24", "256x12")), ("ffhq256", 2, ("1024x48", "4096x48")))
        for space, shape in zip(("dct", "pixel"), shapes)
    }
    assert set(rows) == expected and all(rate > 0 for rate in rows.values())
    assert done.stdout.strip().endswith(lines[-1])  # the table is printed too
