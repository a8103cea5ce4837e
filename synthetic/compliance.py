"""Prompt-compliance benchmark on the shapes model: does each method draw what was asked?

    python -m synthetic.compliance --prompts 256 --json benchmarks/results/compliance-cpu.json

N seeded two-object prompts ("a {colour} {shape} and a {colour} {shape}"); every method
draws each prompt from the same seed (prompt i, seed i: paired samples), methods
interleaved prompt by prompt so machine noise spreads evenly. ``synthetic.checker``
scores each object's colour, shape and side from the pixels; before that the checker
is scored on the ground-truth images of the same prompts, since its numbers mean nothing
unless it reads those right (at least 98%).

Rates are per object; their 95% intervals come from a percentile bootstrap over prompts
(the two objects of one image are not independent), and so do the paired differences
to CFG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from answer_trt.errors import UserInputError
from synthetic.checker import score
from synthetic.dataset import Example, ShapeObject, caption_of, make_example

METRICS = ("colour", "shape", "side", "all")
BOOTSTRAP_RESAMPLES = 2000
CHECKER_BAR = 0.98


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    dns_steps: int = 4
    mode: str = "parallel"


DEFAULT_METHODS = (
    MethodSpec("cfg", "cfg"),
    *(MethodSpec(f"answer K={k} {mode}", "answer", k, mode) for mode in ("parallel", "inner") for k in (2, 4, 8)),
    MethodSpec("dns", "dns"),
)


@dataclass(frozen=True)
class Interval:
    """A rate (or a difference of rates) with its 95% interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class MethodResult:
    label: str
    method: str
    dns_steps: int
    mode: str
    rates: dict[str, Interval]
    vs_cfg: dict[str, Interval]  # paired difference of rates, this method minus CFG
    seconds_per_image: float


def prompt_scores(image: np.ndarray, objects: tuple[ShapeObject, ...]) -> np.ndarray:
    """One row per prompt: the share of its objects right in colour, shape, side, and
    in all three."""
    scores = score(image, objects)
    return np.array([
        np.mean([s.colour for s in scores]),
        np.mean([s.shape for s in scores]),
        np.mean([s.side for s in scores]),
        np.mean([s.colour and s.shape and s.side for s in scores]),
    ])


def bootstrap_mean(rows: np.ndarray, seed: int = 0) -> list[Interval]:
    """Mean of ``rows`` ``[prompts, metrics]`` per metric, with a 95% percentile bootstrap
    interval over prompts."""
    rows = np.asarray(rows, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(rows), size=(BOOTSTRAP_RESAMPLES, len(rows)))
    means = rows[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return [Interval(float(v), float(lo), float(hi)) for v, lo, hi in zip(rows.mean(axis=0), low, high)]


def checker_accuracy(examples: Sequence[Example]) -> dict[str, Any]:
    """The checker on the ground-truth images of the benchmark's own prompts."""
    rows = np.stack([prompt_scores(e.image, e.objects) for e in examples])
    return {"objects": sum(len(e.objects) for e in examples),
            **{m: float(rows[:, k].mean()) for k, m in enumerate(METRICS)}}


Draw = Callable[[str, MethodSpec, int], tuple[np.ndarray, float]]


def pipeline_draw(pipe: Any, steps: int, guidance_scale: float) -> Draw:
    """Draw one image with answer-trt's pipeline: returns (HxWx3 uint8, seconds)."""

    def draw(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        generation = pipe.generate(prompt, method=spec.method, dns_steps=spec.dns_steps, mode=spec.mode, steps=steps,
                                   guidance_scale=guidance_scale, seed=seed)
        elapsed = time.perf_counter() - started
        return np.asarray(generation.images[0].convert("RGB")), elapsed

    return draw


def run_compliance(draw: Draw, methods: Sequence[MethodSpec], prompts: Sequence[tuple[ShapeObject, ...]],
                   progress: Callable[[int], None] = lambda _i: None) -> list[MethodResult]:
    if not methods or methods[0].method != "cfg":
        raise UserInputError("the first method must be cfg: the others are compared with it")
    rows = np.zeros((len(methods), len(prompts), len(METRICS)))
    seconds = np.zeros(len(methods))
    for i, objects in enumerate(prompts):
        for m, spec in enumerate(methods):
            image, elapsed = draw(caption_of(objects), spec, i)
            rows[m, i] = prompt_scores(image, objects)
            seconds[m] += elapsed
        progress(i + 1)
    results = []
    for m, spec in enumerate(methods):
        rates = bootstrap_mean(rows[m])
        deltas = bootstrap_mean(rows[m] - rows[0])
        results.append(MethodResult(spec.label, spec.method, spec.dns_steps, spec.mode, dict(zip(METRICS, rates)),
                                    dict(zip(METRICS, deltas)), float(seconds[m] / len(prompts))))
    return results


def format_table(results: Sequence[MethodResult], prompts: int) -> str:
    head = (f"{'method':<20} {'colour':>22} {'shape':>22} {'side':>22} {'all three':>22} "
            f"{'all three - CFG':>24} {'s/image':>8}")
    lines = [f"per-object compliance, {prompts} prompts ({2 * prompts} objects), 95% bootstrap intervals", head]
    for r in results:
        rates = " ".join(f"{str(r.rates[m]):>22}" for m in METRICS)
        delta = "" if r is results[0] else str(r.vs_cfg["all"])
        lines.append(f"{r.label:<20} {rates} {delta:>24} {r.seconds_per_image:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a shapes model (default: the built-in `tiny`)")
    parser.add_argument("--prompts", type=int, default=256, help="number of seeded prompts N (default 256)")
    parser.add_argument("--seed", type=int, default=1000, help="prompt set seed (not the dataset's training seed)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--methods", default="all", help="comma-separated labels, or `all` (cfg must come first)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.command = "python -m synthetic.compliance " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except UserInputError as exc:
        print(f"compliance: error: {exc}", file=sys.stderr)
        return 2


def _select(methods: str) -> list[MethodSpec]:
    if methods == "all":
        return list(DEFAULT_METHODS)
    by_label = {spec.label.replace(" ", "-"): spec for spec in DEFAULT_METHODS}
    wanted = [label.strip() for label in methods.split(",")]
    unknown = [label for label in wanted if label not in by_label]
    if unknown:
        raise UserInputError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(by_label)}")
    return [by_label[label] for label in wanted]


def _run(args: argparse.Namespace) -> int:
    import answer_trt
    from answer_trt.bench.suite import library_versions, machine_info
    from answer_trt.files import write_text_atomic
    from answer_trt.models.source import resolve_model

    if args.prompts < 2:
        raise UserInputError("--prompts must be at least 2 (intervals need more than one prompt)")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserInputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    methods = _select(args.methods)
    examples = [make_example(args.seed, i, two_objects=True) for i in range(args.prompts)]
    checker = checker_accuracy(examples)
    print(f"checker on the ground-truth images of these prompts ({checker['objects']} objects): "
          + ", ".join(f"{m} {checker[m]:.3f}" for m in METRICS), flush=True)
    if min(checker[m] for m in METRICS) < CHECKER_BAR:
        raise UserInputError(f"the checker reads under {CHECKER_BAR:.0%} of the ground truth right: fix it first")
    pipe = answer_trt.load(args.model)
    prompts = [e.objects for e in examples]  # the same as synthetic.dataset.prompts(seed, N)
    started = time.perf_counter()

    def progress(done: int) -> None:
        if done % 16 == 0 or done == len(prompts):
            print(f"{done}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    results = run_compliance(pipeline_draw(pipe, args.steps, args.guidance_scale), methods, prompts, progress)
    print(format_table(results, args.prompts))
    if args.json is not None:
        model = resolve_model(args.model)
        report = {
            "model": {"name": args.model, "sha256": model.content_hash()},
            "prompts": args.prompts, "prompt_seed": args.seed, "steps": args.steps,
            "guidance_scale": args.guidance_scale, "scheduler": pipe.scheduler_config.get("_class_name", "?"),
            "backend": pipe.backend, "precision": pipe.precision, "batch": 1,
            "checker_on_ground_truth": checker,
            "methods": [asdict(r) for r in results],
            "machine": machine_info(), "versions": library_versions(),
            "command": args.command,
        }
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"compliance: wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
