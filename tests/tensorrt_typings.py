"""A clean copy of the ``tensorrt-stubs`` type stubs for mypy.

The distribution ships its stubs as a plain ``tensorrt`` package without a ``py.typed``
marker (so mypy skips them) and with a few lines that are not valid Python (a parameter
named ``in``, a required parameter after defaults, an import of ``tensorrt_libs``).
This writes a corrected copy into a folder that goes on ``MYPYPATH``."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

FIXES = [
    (re.compile(r"([(,] ?)in: "), r"\1in_: "),
    (re.compile(r"channel_axis: int\) -> IScaleLayer"), "channel_axis: int = ...) -> IScaleLayer"),
    (re.compile(r"^import tensorrt_libs as tensorrt_libs$", re.M), ""),
]


def write_typings(folder: Path) -> Path:
    """Copy and fix the stubs under ``folder``; raises PackageNotFoundError if absent."""
    dist = importlib.metadata.distribution("tensorrt-stubs")
    for file in dist.files or []:
        if not str(file).endswith(".pyi"):
            continue
        text = Path(str(dist.locate_file(file))).read_text()
        for pattern, replacement in FIXES:
            text = pattern.sub(replacement, text)
        target = folder / str(file)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return folder
