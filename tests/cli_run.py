"""Shared test helpers: run the CLI in-process, check a one-line refusal, read pixels.

Used by the tests that drive ``answer-trt`` through ``answer_trt.cli.main`` (LoRA, VAE,
clip skip, backends) so each says only what it checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from answer_trt.cli import main


def run_cli(*args: object) -> int:
    """``answer-trt ARGS`` in this process; returns the exit status (argparse's refusals included)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own refusals
        return int(exit_.code or 0)


def refused_in_one_line(capsys: Any, code: int, *needles: str) -> str:
    """Asserts exit status 2 with one line on stderr (no traceback) holding every needle; returns it."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def file_pixels(path: Path) -> np.ndarray:
    """A PNG's RGB pixels as int16 [H, W, 3] (differences do not wrap)."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def generation_pixels(generation: Any) -> np.ndarray:
    """A ``Generation``'s images as int16 [N, H, W, 3]."""
    return np.stack([np.asarray(image) for image in generation.images]).astype(np.int16)
