"""One ``library_versions()``: the build key, the manifest and the bench report record
the same libraries under the same keys, and asking never loads the export stack."""

from __future__ import annotations

import subprocess
import sys

from answer_trt.manifest import read_manifest
from answer_trt.versions import LIBRARIES, library_versions


def test_build_and_bench_record_the_same_versions(engines_dir):
    from answer_trt.bench import suite

    versions = library_versions()
    assert {"answer_trt", *LIBRARIES} <= set(versions)
    assert read_manifest(engines_dir).versions == versions
    assert suite.library_versions is library_versions


def test_asking_for_versions_does_not_import_onnx():
    code = ("import sys; from answer_trt.versions import library_versions; v = library_versions(); "
            "sys.exit(0 if 'onnx' in v and 'onnx' not in sys.modules else 1)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_the_package_version_comes_from_the_distribution_metadata():
    """pyproject.toml is the version's one source: ``answer_trt.__version__`` and the manifest's
    ``answer_trt`` entry read it from the installed distribution."""
    import importlib.metadata
    import re
    from pathlib import Path

    import answer_trt

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)
    assert declared is not None
    assert answer_trt.__version__ == importlib.metadata.version("answer-trt") == declared[1]
    assert library_versions()["answer_trt"] == declared[1]


def test_the_tensorrt_distribution_is_named_without_the_stubs():
    from answer_trt.versions import tensorrt_distribution

    assert tensorrt_distribution(["tensorrt_cu13"]) == "tensorrt-cu13"
    assert tensorrt_distribution(["tensorrt-cu12", "tensorrt-stubs"]) == "tensorrt-cu12"
    assert tensorrt_distribution(["tensorrt"]) == "tensorrt"  # NVIDIA's tar / NGC wheel
    assert tensorrt_distribution(["tensorrt_stubs"]) is None and tensorrt_distribution([]) is None
    assert tensorrt_distribution(["tensorrt_cu13", "tensorrt-cu12"]) == "tensorrt-cu12+tensorrt-cu13"


def test_the_manifest_versions_record_which_tensorrt_package(monkeypatch):
    """Where TensorRT imports, ``library_versions()`` (the build key and the manifest's versions)
    says which distribution installed it; a fake ``tensorrt`` and fake metadata stand in."""
    import importlib.metadata
    import types

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.106"
    fake.Builder = object
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(importlib.metadata, "packages_distributions",
                        lambda: {"tensorrt": ["tensorrt_cu13"], "torch": ["torch"]})
    versions = library_versions()
    assert versions["tensorrt"] == "11.4.0.106" and versions["tensorrt_package"] == "tensorrt-cu13"
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"tensorrt": ["tensorrt-stubs"]})
    assert "tensorrt_package" not in library_versions()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed: neither key
    assert {"tensorrt", "tensorrt_package"}.isdisjoint(library_versions())
