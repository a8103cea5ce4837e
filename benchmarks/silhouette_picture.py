"""The README's picture of the silhouette ControlNet at work (docs/controlnet-silhouette.png).

    python benchmarks/silhouette_picture.py --controlnet benchmarks/models/tiny-silhouette-controlnet \
        --out docs/controlnet-silhouette.png

"a red circle and a blue square" with three silhouettes (rows): the control image, the picture
without the ControlNet (``controlnet_conditioning_scale`` 0: the UNet alone) and with it (scale 1),
from the same seed, with answer-trt's default guidance (ANSWER) at 30 steps: what
``answer-trt generate "a red circle and a blue square" --engines DIR --control-image C.png --seed S``
draws (``--controlnet-conditioning-scale 0`` for the middle column). Each 32x32 image is scaled
up 5x (nearest) for the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROMPT = "a red circle and a blue square"
# (circle centre x, y, diameter; square centre x, y, side) in pixels of the 32x32 world, and the seed
ROWS = ((7.5, 8.0, 11.0, 24.0, 24.0, 10.0, 0), (9.0, 23.0, 12.0, 23.0, 9.0, 11.0, 1),
        (8.0, 16.0, 9.0, 24.5, 16.0, 13.0, 2))
ZOOM = 5
GAP = 4


def main(argv: list[str] | None = None) -> int:
    from PIL import Image, ImageDraw

    import answer_trt
    from answer_trt.build_config import ControlNetSpec
    from answer_trt.loaders import build_cached
    from answer_trt.synthetic.dataset import ShapeObject, silhouette

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controlnet", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    pipe = answer_trt.load(build_cached("tiny", controlnets=(ControlNetSpec(args.controlnet, 1.0),)))
    cell = 32 * ZOOM
    header = 14
    sheet = Image.new("RGB", (3 * cell + 2 * GAP, header + len(ROWS) * cell + (len(ROWS) - 1) * GAP), "grey")
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((0, 0, sheet.width, header - 1), fill="white")
    for column, title in enumerate(("silhouette (control)", "without ControlNet", "with ControlNet")):
        draw.text((column * (cell + GAP) + 4, 1), title, fill="black")
    for row, (x1, y1, d1, x2, y2, d2, seed) in enumerate(ROWS):
        objects = (ShapeObject("red", "circle", x1, y1, d1), ShapeObject("blue", "square", x2, y2, d2))
        control = silhouette(objects, 32)
        images = [Image.fromarray(control)]
        for scale in (0.0, 1.0):
            images.append(pipe.generate(PROMPT, control_image=control, seed=seed, steps=args.steps,
                                        controlnet_conditioning_scale=scale).images[0])
        for column, image in enumerate(images):
            big = image.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(big, (column * (cell + GAP), header + row * (cell + GAP)))
        print(f"row {row}: seed {seed}, silhouettes {objects}", flush=True)
        if row == 0:  # the first row's control image, for the README's command line
            Image.fromarray(control).save(args.out.with_name(f"{args.out.stem}-control.png"))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
