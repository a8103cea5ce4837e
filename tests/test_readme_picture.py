"""The README's first picture (docs/first-command.png) is what its first command draws today."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_first_picture_is_what_its_first_command_draws_now():
    """docs/first-command.png (shown in the README) against a fresh run of the README's first
    command (benchmarks/first_command_picture.py): 0 levels, so a change of the defaults that
    changes the picture fails here until the picture and its description are redone."""
    from benchmarks.first_command_picture import first_command_picture, zoomed

    shown = np.asarray(Image.open(ROOT / "docs" / "first-command.png").convert("RGB"), dtype=np.int16)
    drawn = np.asarray(zoomed(first_command_picture()), dtype=np.int16)
    assert shown.shape == drawn.shape == (256, 256, 3) and np.abs(shown - drawn).max() == 0
    assert "docs/first-command.png" in (ROOT / "README.md").read_text()
