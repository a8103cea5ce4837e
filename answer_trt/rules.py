"""What a build or a request may ask for, in one place: backend names, precisions,
devices, and the integer and image-size rules with the checks that enforce them.

The CLI, the loaders, the manifest and the export stage import these instead of
repeating them. Every check raises ``UserInputError`` with a message that says what
to change; the CLI's argument parsers wrap the same checks.
"""

from __future__ import annotations

from answer_trt.errors import UserInputError
from answer_trt.iospec import SizeRange

# What `answer-trt build` makes: the backend of an engines folder (and its manifest).
BUILD_BACKENDS = ("onnxruntime", "tensorrt")
# How `load()` / `generate --model` runs a MODEL: ONNX Runtime engines built into the
# cache, or eager PyTorch (the reference).
LOAD_BACKENDS = ("onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")
# Without --precision: fp32 on ONNX Runtime (CPU), fp16 on TensorRT.
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16"}
# bf16 builds need TensorRT: ONNX Runtime's CPU provider has no bf16 kernels.
BF16_BACKENDS = ("tensorrt",)
DEVICES = ("cpu", "cuda")
DEFAULT_MAX_BATCH = 4
# Every image side is a multiple of this (the VAE's 8x downsampling of SD models); a
# model whose VAE downsamples less is checked against its own factor as well.
SIZE_MULTIPLE = 8


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; ``name`` is the flag or argument."""
    if not isinstance(value, str) or value not in choices:
        raise UserInputError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_int(name: str, value: object, low: int = 1) -> int:
    """An integer (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_size(name: str, value: object, multiple: int = SIZE_MULTIPLE) -> int:
    """An image side in pixels: a positive integer multiple of ``multiple``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        hint = f": pick e.g. {value - value % multiple or multiple}" if isinstance(value, int) and value > 0 else ""
        raise UserInputError(f"{name} {value!r} is not a positive multiple of {multiple}{hint}")
    return value


def check_size_range(name: str, value: SizeRange, multiple: int = SIZE_MULTIPLE) -> SizeRange:
    """Both ends of a range checked as sizes, low end not above the high end."""
    for end in (value.low, value.high):
        check_size(name, end, multiple)
    if value.low > value.high:
        raise UserInputError(f"{name} {value.low}:{value.high}: the low end is above the high end")
    return value


def parse_int(text: str, name: str = "value") -> int:
    try:
        return int(text)
    except ValueError:
        raise UserInputError(f"{name} {text!r} is not an integer") from None


def parse_size_range(text: str, name: str = "size") -> SizeRange:
    """``512`` or ``512:768`` (a build-time range); opt is the low end until the build
    resolves it against the model's default size."""
    low, _, high = text.partition(":")
    low_value = parse_int(low, name)
    high_value = parse_int(high, name) if high else low_value
    return check_size_range(name, SizeRange(low_value, low_value, high_value))
