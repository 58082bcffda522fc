"""The package's layer rule (docs/ARCHITECTURE.md, "Layers"): each subpackage imports only the ones below it,
and dctdiff.core is torch-only math."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dctdiff
from dctdiff.commands import SUBCOMMANDS, main

PACKAGE = Path(dctdiff.__file__).parent
# dctdiff.X may import dctdiff.Y only if Y is in X's row. "dctdiff" is the package's __init__ (its environment,
# keep_ray_on_loopback, and the codec's names), "__main__" the `python -m dctdiff` entry point.
ALLOWED_IMPORTS = {
    "core": set(),
    "dctdiff": {"core"},
    "infra": {"dctdiff"},
    "data": {"dctdiff", "core", "infra"},
    "models": {"dctdiff", "core", "infra", "data"},
    "evaluation": {"dctdiff", "core", "infra", "data", "models"},
    "training": {"dctdiff", "core", "infra", "data", "models", "evaluation"},
    "tuning": {"dctdiff", "core", "infra", "data", "models", "evaluation", "training"},
    "commands": {"dctdiff", "core", "infra", "data", "models", "evaluation", "training", "tuning"},
    "__main__": {"commands"},
}
CORE_THIRD_PARTY = {"torch", "numpy", "PIL", "safetensors", "tqdm"}  # all that dctdiff.core may import outside dctdiff


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the text of module ``module`` (dotted),
    at any depth (inside functions too); relative imports are resolved; ``from X import y`` gives X.y."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def subpackage(module: str) -> str:
    """The layer of a dctdiff module name: its subpackage, "dctdiff" (the package itself) or "__main__"."""
    parts = module.split(".")
    if module == "dctdiff.__main__":
        return "__main__"
    return parts[1] if len(parts) > 2 else "dctdiff"


def forbidden_imports(source: str, module: str) -> list[str]:
    """``module:line imports target`` for every import of ``source`` that the table does not allow."""
    layer = subpackage(module)
    problems = []
    for line, target in imported_modules(source, module):
        if target.split(".")[0] != "dctdiff":
            continue
        other = target.split(".")[1] if target.count(".") else "dctdiff"
        other = other if other in ALLOWED_IMPORTS else "dctdiff"  # `from dctdiff import name`: the package itself
        if other != layer and other not in ALLOWED_IMPORTS[layer]:
            problems.append(f"{module}:{line} imports {target}")
    return problems


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("dctdiff", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_every_subpackage_has_a_row_and_imports_only_what_its_row_allows():
    modules = package_modules()
    assert {subpackage(name) for name in modules} == set(ALLOWED_IMPORTS)  # a new subpackage needs a row
    problems = [p for name, path in modules.items() for p in forbidden_imports(path.read_text(), name)]
    assert problems == []


def test_the_table_is_a_strict_order():
    """No two layers may import each other, directly or through others: the rows have no cycle."""
    reachable = {layer: set(row) for layer, row in ALLOWED_IMPORTS.items()}
    for _ in ALLOWED_IMPORTS:
        for layer, row in reachable.items():
            row |= {far for near in list(row) for far in reachable[near]}
    assert all(layer not in row for layer, row in reachable.items())


def test_the_checker_catches_upward_mutual_and_hidden_imports():
    source = (
        "from dctdiff.core.codec import DCTCodec\n"
        "import dctdiff.training.trainer\n"
        "def later():\n"
        "    from dctdiff.evaluation import fid\n"
        "    from ..tuning import sweep_job\n"
    )
    assert forbidden_imports(source, "dctdiff.models.builders") == [
        "dctdiff.models.builders:2 imports dctdiff.training.trainer",
        "dctdiff.models.builders:4 imports dctdiff.evaluation.fid",
        "dctdiff.models.builders:5 imports dctdiff.tuning.sweep_job",
    ]
    assert forbidden_imports("from dctdiff.training import train_job\n", "dctdiff.evaluation.sample_job") == [
        "dctdiff.evaluation.sample_job:1 imports dctdiff.training.train_job"
    ]
    assert forbidden_imports("from dctdiff.evaluation import fid\n", "dctdiff.training.periodic_fid") == []


def test_the_core_imports_only_torch_numpy_pil_safetensors_and_tqdm():
    """Read from the source, so imports inside functions count (an optional extra would not show at import)."""
    outside = {
        (name, target.split(".")[0])
        for name, path in package_modules().items()
        if subpackage(name) == "core"
        for _, target in imported_modules(path.read_text(), name)
        if target.split(".")[0] not in (*sys.stdlib_module_names, "dctdiff", "__future__")
    }
    assert {top for _, top in outside} <= CORE_THIRD_PARTY, outside


def test_the_core_imports_no_ray_mlflow_or_storage_layer():
    """Import every core module in a fresh interpreter and list what came with it."""
    probe = (
        "import pkgutil, importlib, sys, dctdiff.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'dctdiff.core.'): importlib.import_module(m.name)\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    )
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
