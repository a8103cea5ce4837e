"""The README's picture of what its first command draws (docs/first-command.png).

    python benchmarks/first_command_picture.py --out docs/first-command.png

Runs ``answer-trt generate "a red circle and a blue square" --model tiny -o OUT`` itself (seed 0,
the default guidance, the cached ONNX Runtime build: the README's command word for word) and
writes the 32x32 picture scaled up 8x (nearest), so every pixel the user gets is shown as it is.
``tests/test_readme_links.py`` redraws it and holds the README's copy to 0 levels, so the README
cannot show a picture the command no longer draws.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

PROMPT = "a red circle and a blue square"
ZOOM = 8


def first_command_picture() -> Image.Image:
    """The README's first command's image (32x32 RGB), drawn through the CLI."""
    from answer_trt.cli import main

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "shapes.png"
        if main(["generate", PROMPT, "--model", "tiny", "-o", str(out)]) != 0:
            raise RuntimeError("the README's first command failed")
        with Image.open(out) as image:
            return image.convert("RGB").copy()


def zoomed(image: Image.Image) -> Image.Image:
    """``image`` scaled up ``ZOOM`` times, nearest neighbour."""
    return image.resize((image.width * ZOOM, image.height * ZOOM), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    picture = zoomed(first_command_picture())
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
