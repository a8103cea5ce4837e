"""answer-trt: ANSWER-guided text-to-image diffusion on ONNX Runtime and TensorRT engines."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from answer_trt.errors import UserInputError

if TYPE_CHECKING:
    from answer_trt.loaders import load
    from answer_trt.pipeline import Generation, Pipeline

__all__ = ["Generation", "Pipeline", "UserInputError", "__version__", "load"]
_LAZY = {"load": "answer_trt.loaders", "Pipeline": "answer_trt.pipeline", "Generation": "answer_trt.pipeline"}


def __getattr__(name: str) -> Any:
    # torch and diffusers load on first use, so `answer-trt info` and CLI errors stay fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'answer_trt' has no attribute {name!r}")
