"""Every picture and local link the READMEs and docs show is a file the repository tracks
(``*.png`` is git-ignored, so a screenshot written beside the docs but never force-added looks
fine on the machine that made it and is a broken picture everywhere else)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "benchmarks/README.md", "docs/ANSWER.md")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _tracked() -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_local_link_and_picture_is_a_tracked_file(document):
    tracked = _tracked()
    source = ROOT / document
    missing = []
    for target in LINK.findall(source.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (source.parent / target).resolve()
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else target
        if path.is_dir() and any(name.startswith(relative + "/") for name in tracked):
            continue
        if relative not in tracked:
            missing.append(target)
    assert not missing, f"{document} links to files git does not track: {missing}"


def test_every_test_fixture_file_is_tracked():
    """tests/data holds committed fixtures (a PNG made by older code, for replay): one that only
    exists on the machine that made it passes there and fails on every clean clone."""
    tracked = _tracked()
    untracked = [path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "tests" / "data").rglob("*"))
                 if path.is_file() and path.relative_to(ROOT).as_posix() not in tracked]
    assert not untracked, f"fixtures git does not track (git add -f them): {untracked}"

