"""Where answer-trt keeps what it builds on its own: the tiny model and engines for
``generate --model``. ``ANSWER_TRT_CACHE`` overrides the default ``~/.cache/answer-trt``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("ANSWER_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "answer-trt"
