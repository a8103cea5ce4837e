"""answer-trt: ANSWER-guided text-to-image diffusion on ONNX Runtime and TensorRT engines."""

from __future__ import annotations

__version__ = "0.1.0"

from answer_trt.errors import UserInputError
from answer_trt.loaders import load
from answer_trt.pipeline import Generation, Pipeline

__all__ = ["Generation", "Pipeline", "UserInputError", "__version__", "load"]
