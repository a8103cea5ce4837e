"""Where answer-trt keeps what it builds on its own: ``models/`` (the random-weight
built-ins ``tiny-random``, ``tiny-sd21``, ``tiny-sdxl``, generated on first use; the
trained ``tiny`` ships inside the package instead; ``models/single-file/``: single-file
checkpoints converted to diffusers folders), ``engines/`` (the engines that
``load(MODEL)`` and ``generate --model`` build) and ``tensorrt/`` (TensorRT timing
caches). ``ANSWER_TRT_CACHE`` overrides the default ``~/.cache/answer-trt``."""

from __future__ import annotations

import os
from pathlib import Path

from answer_trt.errors import UserInputError


def cache_root() -> Path:
    """``$ANSWER_TRT_CACHE``, else ``~/.cache/answer-trt``; ``UserInputError`` where neither
    can be told (no home directory)."""
    env = os.environ.get("ANSWER_TRT_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".cache" / "answer-trt"
    except (RuntimeError, KeyError):  # HOME unset and no passwd entry
        raise UserInputError("no home directory to keep the cache in: set ANSWER_TRT_CACHE (or HOME)") from None
