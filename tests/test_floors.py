"""The dependency floors in pyproject.toml are the versions CI tests: constraints-min.txt
pins each floor exactly, and .ci/run installs it in a second environment and runs a
focused subset of the tests there (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Extras that cannot be installed on the CI machines: onnxruntime-gpu shares onnxruntime's
# floor (checked below), TensorRT is tested on GPU machines only.
UNTESTED_EXTRAS = ("gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13")


def _floors() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        if extra not in UNTESTED_EXTRAS:
            requirements += reqs
    floors = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", req)
        assert match, f"{req!r}: every tested dependency needs a >= floor"
        floors[_norm(match[1])] = match[2]
    return floors


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_floor_is_pinned_in_constraints_min():
    assert _floors() == _pins()


def test_gpu_runtime_shares_the_cpu_runtime_floor():
    tomllib = pytest.importorskip("tomllib")
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert gpu == [f"onnxruntime-gpu>={_pins()['onnxruntime']}"]
