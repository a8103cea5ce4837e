"""The GPU run's img2img and inpainting stages (issue 33): the VAE encoder call and the
shorter denoising loop, timed by ``bench``'s suite beside txt2img. Called by ``stages.py`` in a
stage's own process.

- ``img2img_tiny``: ``tiny`` in the torch backend on the run's device (the dry run's CPU too):
  ``run_bench`` with an input image at strength 0.6, and with a mask over its right half
  (ANSWER and CFG, fused); the encoder's milliseconds, the steps run and the denoise ratio to
  txt2img (expected: int(steps x 0.6) / steps).
- ``img2img_sd15``: the same on the random-weight full-size SD-1.5 folder (made by
  ``fullsize.make_folder`` unless an earlier stage made it), fp16 on CUDA, 30 DDIM steps at
  512x512, batch 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = Path(os.environ.get("GPU_RUN_MODELS", "/tmp/answer-trt-gpu-models"))
STRENGTH = 0.6


def _inputs(size: tuple[int, int], work: Path) -> tuple[Path, Path]:
    """A random picture of ``size`` (H, W) and a mask over its right half, as PNGs in ``work``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image, mask = work / f"img2img_in_{size[1]}x{size[0]}.png", work / f"img2img_mask_{size[1]}x{size[0]}.png"
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(image)
    values = np.zeros(size, np.uint8)
    values[:, size[1] // 2:] = 255
    Image.fromarray(values).save(mask)
    return image, mask


def _time(pipe: Any, steps: int, runs: int, work: Path, scheduler: str | None, warmup: int = 1) -> dict[str, Any]:
    """``run_bench`` from an image (img2img) and with its mask (inpainting): per method the
    encode, denoise and step medians (ms), the steps run, and the ratios to txt2img."""
    from answer_trt.bench.suite import BenchConfig, run_bench

    image, mask = _inputs(pipe.default_size, work)
    out: dict[str, Any] = {"strength": STRENGTH, "steps": steps, "runs": runs,
                           "expected_share": int(steps * STRENGTH) / steps}
    for workflow, masked in (("img2img", None), ("inpaint", str(mask))):
        config = BenchConfig(methods=("answer", "cfg"), steps=steps, runs=runs, warmup=warmup, scheduler=scheduler,
                             image=str(image), strength=STRENGTH, mask=masked)
        report = run_bench(pipe, config)
        out[workflow] = {
            "results": {f"{r.method} {r.workflow}": {
                "encode_ms": None if r.encode_ms is None else r.encode_ms.median,
                "denoise_ms": r.denoise_ms.median, "step_ms": r.step_ms.median, "steps": r.denoising_steps,
                "total_ms": r.total_ms.median} for r in report.results},
            "ratios": report.ratios}
    return out


def stage_img2img_tiny(device: str, work: Path) -> dict[str, Any]:
    import answer_trt

    pipe = answer_trt.load("tiny", backend="torch", device=device)
    cuda = device == "cuda"  # the dry run proves the path, quickly: 5 steps (3 from the image), one run
    result = {"device": device, **_time(pipe, 30 if cuda else 5, 3 if cuda else 1, work, "ddim", 1 if cuda else 0)}
    result["ok"] = True
    return result


def stage_img2img_sd15(device: str, work: Path) -> dict[str, Any]:
    from answer_trt.loaders import from_model_eager

    sys.path.insert(0, str(HERE))
    from fullsize import make_folder

    started = time.perf_counter()
    folder = MODELS / "sd15"
    result: dict[str, Any] = {"folder": str(folder)}
    if not (folder / "model_index.json").is_file():
        result["model"] = make_folder("sd15", folder, device=device)
    pipe = from_model_eager(str(folder), device)
    result["load_s"] = round(time.perf_counter() - started, 1)
    result.update(_time(pipe, 30, 3, work, "ddim"))
    result["ok"] = True
    return result
