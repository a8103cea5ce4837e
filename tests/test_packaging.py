"""One installed package (issue 21): the wheel puts `answer_trt` (and its dist-info) into
site-packages and nothing else. The export stage and the synthetic world live in the
repository's top-level export/ and synthetic/ folders and install, through setuptools'
package-dir, as answer_trt.export and answer_trt.synthetic; every module of the source tree
is in the wheel once. Built offline from a copy of the sources (no build isolation: the dev
extra brings setuptools)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package path it installs as.
SOURCES = {"answer_trt": "answer_trt", "export": "answer_trt/export", "synthetic": "answer_trt/synthetic"}


def _source_modules() -> set[str]:
    """Every .py file of the source folders, as the path it must have in the wheel (the
    symlinks answer_trt/export and answer_trt/synthetic are not walked: the real folders are)."""
    modules = set()
    for folder, installed in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if rel.parts[0] in ("export", "synthetic") and folder == "answer_trt":
                continue
            if "__pycache__" not in rel.parts:
                modules.add(f"{installed}/{rel.as_posix()}")
    return modules


def _build_wheel(tmp_path: Path) -> list[str]:
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.partial")
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, symlinks=True, ignore=ignore)
    out = tmp_path / "wheel"
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("answer_trt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_installs_answer_trt_and_nothing_else(tmp_path):
    names = _build_wheel(tmp_path)
    top = {name.split("/")[0] for name in names}
    others = {t for t in top if t != "answer_trt" and not (t.startswith("answer_trt-") and t.endswith(".dist-info"))}
    assert not others and len(top) == 2, f"the wheel's top level: {sorted(top)}"
    assert len(names) == len(set(names)), "a file is in the wheel twice"
    missing = _source_modules() - set(names)
    assert not missing, f"not in the wheel (add the subpackage to [tool.setuptools] packages): {sorted(missing)}"
    assert "answer_trt/export/build.py" in names and "answer_trt/synthetic/train.py" in names
    assert any(name.startswith("answer_trt/models/weights/tiny/unet/") for name in names)  # package data
    families = ROOT / "answer_trt" / "models" / "families"  # the single-file family configs and CLIP's merges
    shipped = {f"answer_trt/models/families/{p.relative_to(families).as_posix()}" for p in families.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert len(shipped) >= 30 and not shipped - set(names), sorted(shipped - set(names))


def test_the_source_tree_gives_the_installed_names():
    """The symlinks make the repository's folders importable under their installed names
    (mypy, import-linter and scripts that put the checkout on sys.path rely on them)."""
    for name in ("export", "synthetic"):
        link = ROOT / "answer_trt" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link
