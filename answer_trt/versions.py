"""The library versions and GPU that an engines folder or a benchmark report depends on:
one ``library_versions()`` with the same keys for the build key, the manifest and the
bench report, one ``gpu_capability()`` for the build and the TensorRT loader, and
``tensorrt_available()``. A leaf: it imports nothing of answer_trt (answer-trt's own version
comes from the installed distribution's metadata, not from the package's ``__init__``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Iterable

DISTRIBUTION = "answer-trt"
# A source checkout put on sys.path without installing it has no distribution metadata.
UNKNOWN_VERSION = "0+unknown"
# Key = import name. Versions come from the installed packages' metadata (the same in
# every process, and asking never imports the export stack's onnx); a library whose
# package is named otherwise (onnxruntime-gpu) is asked for its ``__version__``.
LIBRARIES = ("torch", "onnxruntime", "onnx", "diffusers", "transformers")


def _version(name: str) -> str | None:
    """The version of the library importable as ``name``, or None where it is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = sys.modules.get(name) or importlib.import_module(name)
    except ImportError:
        return None
    version = getattr(module, "__version__", None)
    return None if version is None else str(version)


def package_version() -> str:
    """answer-trt's own version, from the installed distribution's metadata (pyproject.toml
    is its one source); ``UNKNOWN_VERSION`` where answer-trt is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def tensorrt_available() -> bool:
    """True where the TensorRT runtime imports. (``tensorrt-stubs`` alone installs a
    ``tensorrt`` folder of type stubs that imports as an empty namespace package.)"""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return False
    return hasattr(trt, "Builder") and hasattr(trt, "__version__")


def tensorrt_distribution(providers: Iterable[str]) -> str | None:
    """Which distribution installed the ``tensorrt`` import, from the names of those that
    provide it (``importlib.metadata.packages_distributions()["tensorrt"]``): ``"tensorrt-cu12"``
    or ``"tensorrt-cu13"`` from PyPI, ``"tensorrt"`` from NVIDIA's tar/NGC wheel. Names are
    normalized (``tensorrt_cu13`` -> ``tensorrt-cu13``); ``tensorrt-stubs`` (type stubs only) is
    left out; several (two packages over one folder) are all named, sorted, joined by ``+``;
    None where none is left."""
    names = {re.sub(r"[-_.]+", "-", name).lower() for name in providers} - {"tensorrt-stubs"}
    return "+".join(sorted(names)) or None


def library_versions() -> dict[str, str]:
    """``{"answer_trt": ..., "torch": ..., ...}`` for every library present (TensorRT
    only where its runtime imports: its version under ``tensorrt``, and the distribution it
    came from, e.g. ``tensorrt-cu13``, under ``tensorrt_package``)."""
    versions = {"answer_trt": package_version()}
    for name in LIBRARIES:
        version = _version(name)
        if version is not None:
            versions[name] = version
    if tensorrt_available():
        import tensorrt

        versions["tensorrt"] = str(tensorrt.__version__)
        package = tensorrt_distribution(importlib.metadata.packages_distributions().get("tensorrt", []))
        if package is not None:
            versions["tensorrt_package"] = package
    return versions


def torch_cuda_version() -> str | None:
    """The CUDA version torch is built for (``"13.0"``), which picks the TensorRT package
    (``answer_trt.backends.bindings.tensorrt_install_hint``); None for a CPU or ROCm build."""
    import torch

    return torch.version.cuda


def gpu_capability() -> str | None:
    """Compute capability of the current CUDA device (``"9.0"`` on an H100), or None
    without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"
