"""Does a silhouette ControlNet put the objects where the silhouettes are? A scored check.

    python -m answer_trt.synthetic.control_family --controlnet benchmarks/models/tiny-silhouette-controlnet \
        --prompts 64 --json benchmarks/results/controlnet-silhouette.json

Example ``i`` (``control_example``): a two-object prompt of the shapes world ("a red circle and a
blue square") and its control image, the objects' silhouettes (``dataset.silhouette``: white on
black) at positions and sizes drawn by the dataset's generator, which the prompt does not carry;
the image is drawn from seed ``i``, so where the objects would land without control is
independent of where the silhouettes are. Each prompt is drawn with the ControlNet on (its
``--controlnet`` scale, default 1) and off (``controlnet_conditioning_scale`` 0: its residuals
times 0, the UNet alone: the baseline), with CFG and answer-trt's default (ANSWER), from the
same seed (paired samples), through ``Pipeline.generate(control_image=...)`` on engines built
with ``--controlnet``.

Scores per object (``placement``, from the pixels: the checker's colour labels), the object
being the pixels of its colour in its half (the shapes world puts the first object left):
``landed`` when there are at least ``checker.MIN_OBJECT_PIXELS`` of them and their centroid lies
inside its silhouette; ``iou``, their intersection over union with the silhouette. Per prompt:
``landed`` (share of its objects), ``both`` (both landed), ``iou`` (mean), and the checker's
``correct`` (colours, shapes, sides and count right: control must not cost compliance). Rates
with 95% percentile-bootstrap intervals over prompts, and the paired difference on - off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from answer_trt.errors import UserInputError
from answer_trt.synthetic.checker import MIN_OBJECT_PIXELS, colour_labels, slot_region
from answer_trt.synthetic.dataset import COLOURS, ShapeObject, caption_of, make_example, object_mask, silhouette

FAMILY = "silhouette"
PLACEMENT_METRICS = ("landed", "both", "iou", "correct")


@dataclass(frozen=True)
class ControlExample:
    """One prompt of the check: the ``objects`` asked for, where their silhouettes put them; the
    ``control`` image (HxWx3 uint8, white silhouettes on black); the ``caption`` (the prompt)."""

    objects: tuple[ShapeObject, ...]
    control: np.ndarray
    caption: str


def control_example(seed: int, index: int, size: int = 32) -> ControlExample:
    """Example ``index`` of prompt set ``seed``: a two-object example of the shapes dataset
    (random colours, shapes, positions and sizes, each object in its own half) as a prompt and
    its silhouettes."""
    objects = make_example(seed, index, size, two_objects=True).objects
    return ControlExample(objects, silhouette(objects, size), caption_of(objects))


def placement(image: np.ndarray, objects: tuple[ShapeObject, ...]) -> list[tuple[bool, float]]:
    """``(landed, iou)`` per object of ``objects`` (left to right) in ``image`` (HxWx3 uint8, the
    objects' size): the object is the pixels labelled its colour (``checker.colour_labels``) in its
    half (the whole image for one object); landed: at least ``MIN_OBJECT_PIXELS`` of them, their
    centroid inside the silhouette (``dataset.object_mask``); iou: their intersection over union
    with the silhouette (0 with no pixels)."""
    height, width, _ = image.shape
    if height != width:
        raise ValueError(f"placement: the shapes world is square, got {width}x{height}")
    labels = colour_labels(image)
    names = list(COLOURS)
    scores = []
    for slot, obj in enumerate(objects):
        region = slot_region(len(objects), slot, height, width)
        pixels = (labels == names.index(obj.colour)) & region
        target = object_mask(obj, height)
        union = (pixels | target).sum()
        iou = float((pixels & target).sum() / union) if union else 0.0
        landed = False
        if pixels.sum() >= MIN_OBJECT_PIXELS:
            ys, xs = np.nonzero(pixels)
            cy, cx = int(ys.mean()), int(xs.mean())  # the centroid's pixel (floor of pixel-index means)
            landed = bool(target[cy, cx])
        scores.append((landed, iou))
    return scores


def prompt_row(image: np.ndarray, objects: tuple[ShapeObject, ...]) -> np.ndarray:
    """One row per prompt, in ``PLACEMENT_METRICS`` order."""
    from answer_trt.synthetic.compliance import prompt_scores

    placed = placement(image, objects)
    landed = [p[0] for p in placed]
    return np.array([np.mean(landed), float(all(landed)), np.mean([p[1] for p in placed]),
                     prompt_scores(image, objects)[-1]])


# (examples, guidance spec, seeds, guidance scale, ControlNet scale) -> HxWx3 uint8 images
Draw = Callable[[Sequence[ControlExample], Any, Sequence[int], float, float], list[np.ndarray]]


def control_draw(pipe: Any, steps: int) -> Draw:
    """Draw each example (its caption, its silhouettes as the control image) with ``spec``'s
    guidance at scale ``w`` and the ControlNet at ``scale``, one ``Pipeline.generate`` each."""

    def draw(examples: Sequence[ControlExample], spec: Any, seeds: Sequence[int], w: float,
             scale: float) -> list[np.ndarray]:
        guidance = spec.guidance(w)
        fields = {name: getattr(guidance, name) for name in ("method", "dns_steps", "mode", "chain_min_sigma",
                                                               "drift_tau", "guidance_rescale", "guidance_min_sigma",
                                                               "negative_scale")}
        images = []
        for example, seed in zip(examples, seeds, strict=True):
            generation = pipe.generate(example.caption, control_image=example.control, steps=steps, seed=seed,
                                       guidance_scale=w, controlnet_conditioning_scale=scale, **fields)
            images.append(np.asarray(generation.images[0]))
        return images

    return draw


def run_check(draw: Draw, methods: Sequence[Any], examples: Sequence[ControlExample], guidance_scale: float,
              scale: float, progress: Callable[[int], None] = lambda _i: None) -> list[dict[str, Any]]:
    """Every method with the ControlNet on (``scale``) and off (0) on every example (example i
    with seed i), interleaved per example; one result per (method, on/off): rates with intervals,
    and for "on" the paired difference to "off"."""
    from answer_trt.synthetic.compliance import bootstrap_mean

    rows = np.zeros((len(methods), 2, len(examples), len(PLACEMENT_METRICS)))
    seconds = np.zeros((len(methods), 2))
    for i, example in enumerate(examples):
        for m, spec in enumerate(methods):
            for c, control_scale in enumerate((0.0, scale)):
                started = time.perf_counter()
                (image,) = draw([example], spec, [i], guidance_scale, control_scale)
                seconds[m, c] += time.perf_counter() - started
                rows[m, c, i] = prompt_row(image, example.objects)
        progress(i + 1)
    results = []
    for m, spec in enumerate(methods):
        for c, control_scale in enumerate((0.0, scale)):
            entry: dict[str, Any] = {
                "method": spec.label, "controlnet_scale": control_scale,
                "rates": dict(zip(PLACEMENT_METRICS, bootstrap_mean(rows[m, c]))),
                "seconds_per_image": float(seconds[m, c] / len(examples))}
            if c:
                entry["on_minus_off"] = dict(zip(PLACEMENT_METRICS, bootstrap_mean(rows[m, 1] - rows[m, 0])))
            results.append(entry)
    return results


def format_table(results: Sequence[dict[str, Any]], prompts: int, w: float) -> str:
    lines = [f"{FAMILY}, w = {w:g}: {prompts} prompts, 95% bootstrap intervals",
             f"{'method':<36} {'ControlNet':>10} " + " ".join(f"{m:>22}" for m in PLACEMENT_METRICS)
             + f" {'both: on - off':>24}"]
    for r in results:
        delta = str(r["on_minus_off"]["both"]) if "on_minus_off" in r else ""
        lines.append(f"{r['method']:<36} {r['controlnet_scale']:>10g} "
                     + " ".join(f"{str(r['rates'][m]):>22}" for m in PLACEMENT_METRICS) + f" {delta:>24}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controlnet", required=True, metavar="DIR[:SCALE]",
                        help="the silhouette ControlNet folder, as build --controlnet takes it")
    parser.add_argument("--model", default="tiny", help="the shapes model it controls (default: the built-in `tiny`)")
    parser.add_argument("--prompts", type=int, default=64, help="seeded prompts N (default 64)")
    parser.add_argument("--seed", type=int, default=3000, help="prompt set seed (not the training set's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.command = "python -m answer_trt.synthetic.control_family " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except UserInputError as exc:
        print(f"control_family: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from answer_trt.bench.suite import machine_info
    from answer_trt.build_config import ControlNetSpec
    from answer_trt.files import write_text_atomic
    from answer_trt.loaders import build_cached, from_engines
    from answer_trt.models.source import resolve_model
    from answer_trt.synthetic.compliance import CFG, default_spec
    from answer_trt.versions import library_versions

    if args.prompts < 2:
        raise UserInputError("--prompts must be at least 2 (intervals need more than one prompt)")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserInputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    spec = ControlNetSpec.parse(args.controlnet)
    examples = [control_example(args.seed, i) for i in range(args.prompts)]
    truth = np.stack([prompt_row(silhouette_render(e), e.objects) for e in examples]).mean(axis=0)
    print("checker on the ground truth: " + ", ".join(f"{m} {v:.3f}" for m, v in zip(PLACEMENT_METRICS, truth)),
          flush=True)
    if truth[:3].min() < 1.0:  # drawn exactly in their silhouettes, the objects must all read as landed
        raise UserInputError("the placement check does not read every ground-truth object as landed: fix it")
    pipe = from_engines(build_cached(args.model, controlnets=(spec,)), verify=False)
    methods = [CFG, default_spec()]
    started = time.perf_counter()

    def progress(done: int) -> None:
        if done % 8 == 0 or done == len(examples):
            print(f"{done}/{len(examples)} prompts, {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)

    results = run_check(control_draw(pipe, args.steps), methods, examples, args.guidance_scale, spec.scale, progress)
    print(format_table(results, len(examples), args.guidance_scale), flush=True)
    if args.json is not None:
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return vars(value) if hasattr(value, "low") else value

        model = resolve_model(args.model)
        report = {
            "model": {"name": args.model, "sha256": model.content_hash()},
            "controlnet": {"path": str(args.controlnet), "scale": spec.scale},
            "family": FAMILY, "prompts": args.prompts, "prompt_seed": args.seed, "steps": args.steps,
            "guidance_scale": args.guidance_scale, "backend": pipe.backend, "precision": pipe.precision,
            "checker_on_ground_truth": dict(zip(PLACEMENT_METRICS, map(float, truth))),
            "results": [plain(r) for r in results],
            "seconds": time.perf_counter() - started,
            "machine": machine_info(), "versions": library_versions(), "command": args.command,
        }
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"control_family: wrote {args.json}", file=sys.stderr)
    return 0


def silhouette_render(example: ControlExample) -> np.ndarray:
    """The ground truth of an example: its objects drawn where their silhouettes are."""
    from answer_trt.synthetic.dataset import render

    return render(example.objects, example.control.shape[0])


if __name__ == "__main__":
    sys.exit(main())
