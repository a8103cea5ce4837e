"""Dependencies run one way: the runtime (answer_trt/) owns the contract and never
imports the export stage (export/), which depends on it. Importing the runtime, its CLI
included, loads neither ``export`` nor ONNX; the one way in is ``loaders.build_engines``,
a lazy import made only when a build is asked for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "answer_trt"
# (file, function) of the one import of the export stage the runtime may make.
ALLOWED_EXPORT_IMPORTS = {("answer_trt/loaders.py", "build_engines")}


def test_importing_the_runtime_and_its_cli_loads_no_export_stage():
    code = (
        "import sys, answer_trt, answer_trt.cli; answer_trt.load; "
        "import answer_trt.pipeline, answer_trt.loaders, answer_trt.manifest, answer_trt.backends.ort, "
        "answer_trt.backends.torch_eager, answer_trt.backends.torch_modules, answer_trt.graphed, answer_trt.bench.suite; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('export', 'onnx')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def export_imports(path: Path) -> list[tuple[int, str | None]]:
    """``(line, enclosing function)`` of every ``import export...`` / ``from export...``."""
    found: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            if any(name == "export" or name.startswith("export.") for name in names):
                found.append((child.lineno, function))
            visit(child, function)

    visit(ast.parse(path.read_text(), str(path)), None)
    return found


def test_no_runtime_module_imports_the_export_stage_but_the_one_lazy_build():
    seen = set()
    for path in sorted(RUNTIME.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line, function in export_imports(path):
            assert (rel, function) in ALLOWED_EXPORT_IMPORTS, f"{rel}:{line} imports the export stage"
            seen.add((rel, function))
    assert seen == ALLOWED_EXPORT_IMPORTS  # the allowed spot still exists (the check is not vacuous)


def test_the_static_check_sees_every_form_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import export\nimport export.build as b\nfrom export import build\n"
                     "def f():\n    from export.build import build\n"
                     "if True:\n    import exporter\nfrom .export import x\n")
    assert export_imports(probe) == [(1, None), (2, None), (3, None), (5, "f")]
