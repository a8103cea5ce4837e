"""Where answer-trt keeps what it builds on its own: ``models/`` (the random-weight
built-ins ``tiny-random``, ``tiny-sd21``, ``tiny-sdxl``, generated on first use; the
trained ``tiny`` ships inside the package instead), ``engines/`` (the engines that
``load(MODEL)`` and ``generate --model`` build) and ``tensorrt/`` (TensorRT timing
caches). ``ANSWER_TRT_CACHE`` overrides the default ``~/.cache/answer-trt``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("ANSWER_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "answer-trt"
