"""answer-trt: ANSWER-guided text-to-image diffusion on ONNX Runtime and TensorRT engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from answer_trt.errors import UserInputError

if TYPE_CHECKING:
    __version__: str

    from answer_trt.loaders import load
    from answer_trt.pipeline import Generation, Pipeline

__all__ = ["Generation", "Pipeline", "UserInputError", "__version__", "load"]
_LAZY = {"load": "answer_trt.loaders", "Pipeline": "answer_trt.pipeline", "Generation": "answer_trt.pipeline"}


def __getattr__(name: str) -> Any:
    # torch and diffusers load on first use, so `answer-trt info` and CLI errors stay fast.
    if name == "__version__":  # from the distribution's metadata (pyproject.toml is its one source)
        from answer_trt.versions import package_version

        return package_version()
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'answer_trt' has no attribute {name!r}")
