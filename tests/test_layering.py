"""Three layers, imports only downwards (issue 21): core runtime < export stage
(answer_trt.export) < application (loaders' cached builds, cli, serving, bench, the
synthetic world), and no import circle between sibling modules. import-linter checks it
(`lint-imports`, contracts in pyproject.toml's [tool.importlinter]); the tests here run it,
show that it bites, and check at run time that importing the runtime and its CLI loads
neither the export stage nor ONNX (the application reaches the build only through
``loaders.build_engines``, a lazy import made when a build is asked for)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the tree at ``root`` with the contracts of its pyproject.toml."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}  # this tree's answer_trt, not the installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)


def test_the_import_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout, proc.stdout


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    """The source tree (without the tiny model's weights) and pyproject.toml, in tmp_path."""
    ignore = shutil.ignore_patterns("__pycache__", "weights")
    for folder in ("answer_trt", "export", "synthetic"):
        shutil.copytree(REPO / folder, tmp_path / folder, symlinks=True, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(("module", "line", "broken"), [
    # a core module importing the export stage, and the export stage importing the application
    ("answer_trt/errors.py", "import answer_trt.export.build", "Three layers"),
    ("export/profiles.py", "from answer_trt.loaders import load", "Three layers"),
    # a circle inside the core runtime (pipeline imports config)
    ("answer_trt/config.py", "import answer_trt.pipeline", "No import circles"),
    # a new module that no layer names
    ("answer_trt/unplaced.py", "import answer_trt.errors", "Three layers"),
])
def test_the_contracts_bite(tree_copy: Path, module: str, line: str, broken: str):
    path = tree_copy / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{line}\n")
    proc = lint_imports(tree_copy)
    assert proc.returncode != 0, proc.stdout
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout.split(broken, 1)[1].splitlines()[0], proc.stdout


def test_importing_the_runtime_and_its_cli_loads_no_export_stage():
    code = (
        "import sys, answer_trt, answer_trt.cli; answer_trt.load; "
        "import answer_trt.pipeline, answer_trt.loaders, answer_trt.manifest, answer_trt.backends.ort, "
        "answer_trt.backends.torch_eager, answer_trt.backends.torch_modules, answer_trt.graphed, "
        "answer_trt.bench.suite; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'onnx' or m.startswith('answer_trt.export')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
