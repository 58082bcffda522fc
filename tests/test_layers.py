"""The package's layer rule (docs/ARCHITECTURE.md, "Layers"): dctdiff.core is torch-only math."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dctdiff.commands import SUBCOMMANDS, main


def test_the_core_imports_no_ray_mlflow_or_storage_layer():
    """Import every core module in a fresh interpreter and list what came with it."""
    probe = (
        "import pkgutil, importlib, sys, dctdiff.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'dctdiff.core.'): importlib.import_module(m.name)\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert "dctdiff.core.codec" in loaded  # the probe imported the core
    forbidden = {m for m in loaded if m.split(".")[0] in ("ray", "mlflow", "pyarrow") or m.startswith("dctdiff.infra")}
    forbidden |= {m for m in loaded if m.startswith("dctdiff.") and m.split(".")[1] not in ("core",)}
    assert forbidden == set()


def test_every_subcommand_has_a_module_with_main_and_help(capsys):
    assert main([]) == 2 and "subcommands:" in capsys.readouterr().out
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert f"dctdiff {name}" in capsys.readouterr().out
    assert main(["bogus"]) == 2 and "unknown subcommand 'bogus'" in capsys.readouterr().err


def test_the_console_script_runs_from_any_folder(tmp_path):
    """`python -m dctdiff` from a folder outside the repository (as the installed `dctdiff` command)."""
    result = subprocess.run([sys.executable, "-m", "dctdiff", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout
