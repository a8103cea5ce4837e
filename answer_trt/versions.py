"""The library versions and GPU that an engines folder or a benchmark report depends on:
one ``library_versions()`` with the same keys for the build key, the manifest and the
bench report, and one ``gpu_capability()`` for the build and the TensorRT loader."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from answer_trt import __version__
from answer_trt.backends import tensorrt_available

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


def library_versions() -> dict[str, str]:
    """``{"answer_trt": ..., "torch": ..., ...}`` for every library present (TensorRT
    only where its runtime imports)."""
    versions = {"answer_trt": __version__}
    for name in LIBRARIES:
        version = _version(name)
        if version is not None:
            versions[name] = version
    if tensorrt_available():
        import tensorrt

        versions["tensorrt"] = str(tensorrt.__version__)
    return versions


def gpu_capability() -> str | None:
    """Compute capability of the current CUDA device (``"9.0"`` on an H100), or None
    without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"
