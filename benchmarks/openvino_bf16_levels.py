"""Pixel levels between two engines folders' images (the bf16 gate of issue 35: fp32 against
bf16 OpenVINO engines of one model), same prompts and seeds, CFG and the default guidance.

    python -m benchmarks.openvino_bf16_levels /tmp/ov35/gate-fp32 /tmp/ov35/gate-bf16 --images 32

Prompts: the compliance suite's ``pair`` family (prompt seed 1000, prompt i with seed i), w = 7.5,
the model's default size and steps. Prints, per method, the worst, median and 90th-percentile
per-image max abs difference (8-bit levels) and the mean abs difference per image.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("base", help="engines folder (fp32)")
    parser.add_argument("other", help="engines folder (bf16)")
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args(argv)

    import answer_trt
    from answer_trt.synthetic.dataset import family_example

    base, other = answer_trt.load(args.base), answer_trt.load(args.other)
    for method in ("cfg", None):  # None: the default guidance
        worst, means = [], []
        for i in range(args.images):
            prompt = family_example("pair", 1000, i).caption
            kwargs = dict(seed=i, guidance_scale=7.5, **({"method": method} if method else {}))
            a = np.asarray(base.generate(prompt, **kwargs).images[0].convert("RGB")).astype(np.int16)
            b = np.asarray(other.generate(prompt, **kwargs).images[0].convert("RGB")).astype(np.int16)
            diff = np.abs(a - b)
            worst.append(int(diff.max()))
            means.append(float(diff.mean()))
        print(f"{method or 'default'}: {args.images} images, max abs diff (levels) worst {max(worst)}, median "
              f"{np.median(worst):.0f}, p90 {np.percentile(worst, 90):.0f}; mean abs diff per image: mean "
              f"{np.mean(means):.2f}, worst {max(means):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
