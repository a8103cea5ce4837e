"""Engines behind one interface: ``run(dict of named tensors) -> dict of named tensors``."""

from __future__ import annotations

# Defined with the other "what is installed" answers (versions.py, a leaf); kept here by name.
from answer_trt.versions import tensorrt_available

__all__ = ["tensorrt_available"]
