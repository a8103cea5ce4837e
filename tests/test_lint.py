"""ruff (issue 21): the code passes `ruff check` with pyproject.toml's [tool.ruff] rules
(pycodestyle, pyflakes, import sorting, bugbear, pyupgrade, and no import of the top-level
`export` / `synthetic` folders, which install as answer_trt.export / answer_trt.synthetic).
`ruff format` is not used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED = ["answer_trt", "export", "synthetic", "tests", "benchmarks"]


def ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_code_passes_ruff():
    proc = ruff(*CHECKED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_bites(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nimport os\n\nfrom export.build import build\n\nprint(os, sys, build, f'x')\n")
    proc = ruff("--config", str(REPO / "pyproject.toml"), str(probe), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for code in ("I001", "TID251", "F541"):
        assert code in proc.stdout, proc.stdout
