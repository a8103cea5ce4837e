"""Engines behind one interface: ``run(dict of named tensors) -> dict of named tensors``."""

from __future__ import annotations

import importlib


def tensorrt_available() -> bool:
    """True where the TensorRT runtime imports. (``tensorrt-stubs`` alone installs a
    ``tensorrt`` folder of type stubs that imports as an empty namespace package.)"""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return False
    return hasattr(trt, "Builder") and hasattr(trt, "__version__")
