"""Prompt-compliance benchmark on the shapes model: does each method draw what was asked?

    python -m answer_trt.synthetic.compliance --prompts 256 --families all --guidance-scales 3,5,7.5 \
        --json benchmarks/results/compliance-suite.json

Prompt families (``answer_trt.synthetic.dataset.FAMILIES``): one object and nothing else, free pairs,
same-colour pairs, same-shape pairs; N seeded prompts each. Every method draws each prompt
from the same seed (prompt i, seed i: paired samples); methods are interleaved batch by
batch so machine noise spreads evenly. ``answer_trt.synthetic.checker`` scores each object's colour,
shape and side and counts the objects in the picture; before that the checker is scored
on the ground-truth images of the same prompts, since its numbers mean nothing unless it
reads those right (at least 98%).

Metrics: ``colour``, ``shape``, ``side`` and ``all`` (all three) are per-object shares per
prompt; ``count`` is 1 when the picture holds exactly the asked number of objects;
``correct`` is 1 when every object is right in all three and the count is right (the
picture is what was asked, nothing extra, nothing missing). 95% intervals come from a
percentile bootstrap over prompts, and so do the paired differences to CFG.

Prompts are drawn in batches (``--batch``) through answer-trt's pipeline parts (text
encoder, the sampler over the UNet engine, VAE decoder): the same computation as
``Pipeline.generate`` for each prompt and seed (tested), at a fraction of the time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from answer_trt.errors import UserInputError
from answer_trt.synthetic.checker import count_objects, score
from answer_trt.synthetic.dataset import (
    FAMILIES,
    Example,
    ShapeObject,
    bias_negative,
    bias_shape_negative,
    caption_of,
    family_example,
)

METRICS = ("colour", "shape", "side", "all", "count", "correct")
# Negative-prompt rules of the external-resource baselines (``MethodSpec.negative``).
NEGATIVE_RULES: dict[str, Callable[[tuple[ShapeObject, ...]], str | None]] = {
    "bias": bias_negative, "bias-shape": bias_shape_negative}
BOOTSTRAP_RESAMPLES = 2000
CHECKER_BAR = 0.98


@dataclass(frozen=True)
class MethodSpec:
    """A guidance method and its settings (``answer_trt.config.GuidanceConfig`` fields
    besides the guidance scale, which the benchmark sweeps)."""

    method: str
    dns_steps: int = 4
    mode: str = "parallel"
    negative_scale: float | None = None
    chain_min_sigma: float = 0.0
    drift_tau: float | None = None
    guidance_rescale: float = 0.0
    guidance_min_sigma: float = 0.0
    # Not a guidance setting: a rule in NEGATIVE_RULES that writes each prompt's negative prompt
    # (the external-resource baselines); "" for none (the empty prompt).
    negative: str = ""

    @property
    def label(self) -> str:
        off = f" gmin={self.guidance_min_sigma:g}" if self.guidance_min_sigma else ""
        if self.negative:
            off += f" negative={self.negative}"
        if self.method != "answer":
            return self.method + (f" rescale={self.guidance_rescale:g}" if self.guidance_rescale else "") + off
        parts = [f"answer K={self.dns_steps} {self.mode}"]
        if self.chain_min_sigma:
            parts.append(f"min-sigma={self.chain_min_sigma:g}")
        if self.drift_tau is not None:
            parts.append(f"tau={self.drift_tau:g}")
        if self.guidance_rescale:
            parts.append(f"rescale={self.guidance_rescale:g}")
        if self.negative_scale is not None:
            parts.append(f"wn={self.negative_scale:g}")
        return " ".join(parts) + off

    def guidance_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "negative"}

    def negative_prompt(self, objects: tuple[ShapeObject, ...]) -> str | None:
        """The negative prompt for a prompt of these objects: None (the empty prompt) unless
        ``negative`` names a rule."""
        return NEGATIVE_RULES[self.negative](objects) if self.negative else None

    def guidance(self, w: float) -> Any:
        """The ``GuidanceConfig`` at guidance scale ``w``; no ``wn`` means wn = w, as the label says."""
        from answer_trt.config import GuidanceConfig

        kwargs = self.guidance_kwargs()
        if kwargs["negative_scale"] is None:
            kwargs["negative_scale"] = w
        return GuidanceConfig(guidance_scale=w, **kwargs)


CFG = MethodSpec("cfg")


def default_spec() -> MethodSpec:
    """answer-trt's default guidance (``answer_trt.config.DEFAULT_GUIDANCE``, its wn resolved)
    as a spec: what ``answer-trt generate`` runs when no guidance flag is given."""
    from answer_trt.config import DEFAULT_GUIDANCE as default

    return MethodSpec(default.method, default.dns_steps, default.mode, default.wn, default.chain_min_sigma,
                      default.drift_tau, default.guidance_rescale, default.interval_min_sigma)
CANDIDATES = (
    CFG,
    MethodSpec("answer", 4),  # ANSWER.md's reconstruction as first adopted
    MethodSpec("answer", 2),
    MethodSpec("answer", 4, chain_min_sigma=0.5),
    MethodSpec("answer", 3, chain_min_sigma=0.5),
    MethodSpec("answer", 8, chain_min_sigma=0.5),
    MethodSpec("answer", 4, drift_tau=0.3),
    MethodSpec("answer", 4, guidance_rescale=0.7),
    MethodSpec("answer", 4, chain_min_sigma=0.5, guidance_rescale=0.7),
    MethodSpec("cfg", guidance_rescale=0.7),
    *(MethodSpec("answer", 4, chain_min_sigma=0.5, negative_scale=wn) for wn in (1.0, 2.0, 4.0)),
    MethodSpec("answer", 2, mode="inner"),
    # ANSWER's price (variant "guidance interval"): guidance off below sigma_t = gmin, CFG and the default alike.
    *(MethodSpec("cfg", guidance_min_sigma=g) for g in (0.3, 0.5, 0.7)),
    *(MethodSpec("answer", 4, chain_min_sigma=0.5, negative_scale=1.0, guidance_min_sigma=g) for g in (0.3, 0.5, 0.7)),
    # The external-resource baselines: CFG whose negative prompt names the bias (needs to know it).
    *(MethodSpec("cfg", negative=rule) for rule in NEGATIVE_RULES),
)
OTHERS = (MethodSpec("dns"),)  # by name only: DNS is meant to miss


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
    spec: dict[str, Any]
    rates: dict[str, Interval]
    vs_cfg: dict[str, Interval]  # paired difference of rates, this method minus CFG
    seconds_per_image: float
    # "correct" (0/1) per prompt, in prompt order: two runs of the same prompts and seeds (fp32
    # and bf16 engines) are compared prompt by prompt (``paired_runs``).
    correct_by_prompt: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Cell:
    """One prompt family at one guidance scale."""

    family: str
    guidance_scale: float
    prompts: int
    methods: list[MethodResult] = field(default_factory=list)


def prompt_scores(image: np.ndarray, objects: tuple[ShapeObject, ...]) -> np.ndarray:
    """One row per prompt, in ``METRICS`` order."""
    scores = score(image, objects)
    right = [s.colour and s.shape and s.side for s in scores]
    count_ok = count_objects(image) == len(objects)
    return np.array([
        np.mean([s.colour for s in scores]),
        np.mean([s.shape for s in scores]),
        np.mean([s.side for s in scores]),
        np.mean(right),
        float(count_ok),
        float(count_ok and all(right)),
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


# (prompts, negative prompts, method, seeds, guidance scale) -> (HxWx3 uint8 images, seconds for all of them)
Draw = Callable[[Sequence[str], Sequence[str | None], MethodSpec, Sequence[int], float],
                tuple[list[np.ndarray], float]]


def batch_inputs(pipe: Any, prompts: Sequence[str], negatives: Sequence[str | None],
                 seeds: Sequence[int]) -> tuple[Any, Any]:
    """``(Conditioning, noise)`` of ``pipe.generate(prompt, negative_prompt=negative,
    seed=seed)`` for every (prompt, negative, seed), stacked on the batch axis (noise drawn per
    seed on the CPU, as generate does)."""
    import torch

    from answer_trt.conditioning import cat_conditions
    from answer_trt.sampler import Conditioning

    height, width = pipe.default_size
    factor = pipe.dims.vae_scale_factor
    shape = (1, pipe.dims.latent_channels, height // factor, width // factor)
    pairs = [pipe.text.encode(prompt, negative) for prompt, negative in zip(prompts, negatives, strict=True)]
    cond = Conditioning(cat_conditions([p for p, _ in pairs]), cat_conditions([n for _, n in pairs]))
    noise = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    return cond, noise.to(pipe.device)


def pipeline_draw(pipe: Any, steps: int) -> Draw:
    """Draw a batch of prompts, one seed each, with answer-trt's pipeline parts: the
    computation of ``pipe.generate(prompt, seed=seed, ...)`` for every (prompt, seed)
    pair, stacked on the batch axis."""
    from answer_trt.images import to_pil
    from answer_trt.iospec import VAE_DECODER
    from answer_trt.sampler import sample
    from answer_trt.schedulers import make_scheduler

    decoder = pipe.engines[VAE_DECODER]

    def draw(prompts: Sequence[str], negatives: Sequence[str | None], spec: MethodSpec, seeds: Sequence[int],
             w: float) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        guidance = spec.guidance(w)
        cond, noise = batch_inputs(pipe, prompts, negatives, seeds)
        latents = sample(pipe.denoiser, noise, cond, make_scheduler(pipe.scheduler_config), steps,
                         guidance, prediction_type=pipe.prediction_type)
        decoded = decoder.run({decoder.spec.input_names[0]: latents})[decoder.spec.output_names[0]]
        images = [np.asarray(image) for image in to_pil(decoded, {})]
        return images, time.perf_counter() - started

    return draw


def run_compliance(draw: Draw, methods: Sequence[MethodSpec], prompts: Sequence[tuple[ShapeObject, ...]],
                   guidance_scale: float = 7.5, batch: int = 1,
                   progress: Callable[[int], None] = lambda _i: None) -> list[MethodResult]:
    """Every method on every prompt (prompt i with seed i), methods interleaved per batch."""
    if not methods or methods[0] != CFG:
        raise UserInputError("the first method must be plain cfg: the others are compared with it")
    rows = np.zeros((len(methods), len(prompts), len(METRICS)))
    seconds = np.zeros(len(methods))
    for first in range(0, len(prompts), batch):
        chunk = range(first, min(first + batch, len(prompts)))
        captions = [caption_of(prompts[i]) for i in chunk]
        for m, spec in enumerate(methods):
            negatives = [spec.negative_prompt(prompts[i]) for i in chunk]
            images, elapsed = draw(captions, negatives, spec, list(chunk), guidance_scale)
            for i, image in zip(chunk, images):
                rows[m, i] = prompt_scores(image, prompts[i])
            seconds[m] += elapsed
        progress(chunk.stop)
    results = []
    for m, spec in enumerate(methods):
        rates = bootstrap_mean(rows[m])
        deltas = bootstrap_mean(rows[m] - rows[0])
        results.append(MethodResult(spec.label, asdict(spec), dict(zip(METRICS, rates)), dict(zip(METRICS, deltas)),
                                    float(seconds[m] / len(prompts)), rows[m, :, METRICS.index("correct")].tolist()))
    return results


def paired_runs(base: Sequence[float], other: Sequence[float]) -> Interval:
    """``other`` minus ``base``: the mean difference of two runs' per-prompt scores (the same
    prompts and seeds in the same order, e.g. ``correct_by_prompt`` of fp32 and bf16 engines)
    with its 95% bootstrap interval over prompts; a ``UserInputError`` if they differ in length."""
    if len(base) != len(other) or len(base) < 2:
        raise UserInputError(f"paired runs need the same prompts (at least 2): got {len(base)} and {len(other)}")
    return bootstrap_mean(np.asarray(other, dtype=np.float64)[:, None] - np.asarray(base, dtype=np.float64)[:, None])[0]


def run_inpaint_compliance(draw: Callable[..., tuple[list[np.ndarray], float]], methods: Sequence[MethodSpec],
                           examples: Sequence[Any], guidance_scale: float = 7.5, batch: int = 16,
                           progress: Callable[[int], None] = lambda _i: None) -> list[MethodResult]:
    """``run_compliance`` for the inpainting family (``inpaint_family.InpaintExample``s, drawn by
    ``inpaint_family.inpaint_draw``): every method on every example (example i
    with seed i), methods interleaved per ``batch``; the checker's metrics against the target
    objects, bootstrap intervals and paired differences to CFG (the first method), and
    ``left_levels``: the mean level difference of the kept left half to the input."""
    from answer_trt.synthetic.inpaint_family import left_kept

    if not methods or methods[0] != CFG:
        raise UserInputError("the first method must be plain cfg: the others are compared with it")
    rows = np.zeros((len(methods), len(examples), len(METRICS) + 1))
    seconds = np.zeros(len(methods))
    for first in range(0, len(examples), batch):
        chunk = range(first, min(first + batch, len(examples)))
        for m, spec in enumerate(methods):
            images, elapsed = draw([examples[i] for i in chunk], spec, list(chunk), guidance_scale)
            for i, image in zip(chunk, images):
                rows[m, i, :-1] = prompt_scores(image, examples[i].target)
                rows[m, i, -1] = left_kept(image, examples[i])
            seconds[m] += elapsed
        progress(chunk.stop)
    names = (*METRICS, "left_levels")
    return [MethodResult(spec.label, asdict(spec), dict(zip(names, bootstrap_mean(rows[m]))),
                         dict(zip(names, bootstrap_mean(rows[m] - rows[0]))), float(seconds[m] / len(examples)))
            for m, spec in enumerate(methods)]


def format_table(cell: Cell) -> str:
    head = (f"{'method':<48} {'all three':>22} {'count':>22} {'correct':>22} {'correct - CFG':>24} "
            f"{'s/image':>8}")
    lines = [f"{cell.family}, w = {cell.guidance_scale:g}: {cell.prompts} prompts, 95% bootstrap intervals", head]
    for r in cell.methods:
        rates = " ".join(f"{str(r.rates[m]):>22}" for m in ("all", "count", "correct"))
        delta = "" if r is cell.methods[0] else str(r.vs_cfg["correct"])
        lines.append(f"{r.label:<48} {rates} {delta:>24} {r.seconds_per_image:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a shapes model (default: the built-in `tiny`)")
    parser.add_argument("--prompts", type=int, default=256, help="seeded prompts N per family (default 256)")
    parser.add_argument("--seed", type=int, default=1000, help="prompt set seed (not the dataset's training seed)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scales", default="7.5", help="comma-separated w values (default 7.5)")
    parser.add_argument("--families", default="pair", help=f"comma-separated of {', '.join(FAMILIES)}, or `all`; "
                        "`inpaint` (not in all): repaint the right object as a green triangle "
                        "(answer_trt.synthetic.inpaint_family)")
    parser.add_argument("--methods", default="all", help="comma-separated labels (spaces as -), or `all`; "
                        "cfg is always run first")
    parser.add_argument("--batch", type=int, default=32, help="prompts per engine call (default 32)")
    parser.add_argument("--backend", choices=("onnxruntime", "openvino", "torch"), default="onnxruntime",
                        help="engines built into the cache (onnxruntime fp32; openvino in its default precision, "
                             "bf16 where the CPU has it) or eager torch")
    parser.add_argument("--engines", type=Path,
                        help="an engines folder to run instead (any backend and precision, e.g. `answer-trt build "
                             "--backend openvino --precision bf16 --max-batch 32`); --model must be its model")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where --backend torch runs (cuda: the GPU machine's way to run the suite in minutes)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.command = "python -m answer_trt.synthetic.compliance " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except UserInputError as exc:
        print(f"compliance: error: {exc}", file=sys.stderr)
        return 2


def select_methods(methods: str) -> list[MethodSpec]:
    if methods == "all":
        return list(CANDIDATES)
    by_label = {spec.label.replace(" ", "-"): spec for spec in (*CANDIDATES, *OTHERS)}
    wanted = [label.strip() for label in methods.split(",") if label.strip() != "cfg"]
    unknown = [label for label in wanted if label not in by_label]
    if unknown:
        raise UserInputError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(by_label)}")
    return [CFG, *(by_label[label] for label in wanted)]


def _parse_list(text: str, name: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserInputError(f"--{name} is empty")
    if allowed is not None:
        if items == ["all"]:
            return list(allowed)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise UserInputError(f"unknown --{name} {', '.join(unknown)}: choose from {', '.join(allowed)}, or all")
    return items


def _run(args: argparse.Namespace) -> int:
    import answer_trt
    from answer_trt.bench.suite import machine_info
    from answer_trt.files import write_text_atomic
    from answer_trt.loaders import build_cached, from_engines
    from answer_trt.models.source import resolve_model
    from answer_trt.versions import library_versions

    if args.prompts < 2:
        raise UserInputError("--prompts must be at least 2 (intervals need more than one prompt)")
    if args.batch < 1:
        raise UserInputError("--batch must be at least 1")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserInputError(f"--json {args.json}: folder {args.json.parent} does not exist")
    methods = select_methods(args.methods)
    from answer_trt.synthetic import inpaint_family

    families = _parse_list(args.families, "families", (*FAMILIES, inpaint_family.FAMILY))
    if families == [*FAMILIES, inpaint_family.FAMILY]:  # `all`: the text-to-image families
        families = list(FAMILIES)
    inpaints = {f: [inpaint_family.inpaint_example(args.seed, i) for i in range(args.prompts)]
                for f in families if f == inpaint_family.FAMILY}
    try:
        scales = [float(w) for w in _parse_list(args.guidance_scales, "guidance-scales")]
    except ValueError:
        raise UserInputError(f"--guidance-scales {args.guidance_scales!r}: give numbers such as 3,5,7.5") from None
    examples = {f: [e.ground_truth() for e in inpaints[f]] if f in inpaints else
                [family_example(f, args.seed, i) for i in range(args.prompts)] for f in families}
    checker = {f: checker_accuracy(e) for f, e in examples.items()}
    for f, c in checker.items():
        print(f"checker on the ground truth of {f} ({c['objects']} objects): "
              + ", ".join(f"{m} {c[m]:.3f}" for m in METRICS), flush=True)
        if min(c[m] for m in METRICS) < CHECKER_BAR:
            raise UserInputError(f"the checker reads under {CHECKER_BAR:.0%} of the {f} ground truth right: fix it")
    if args.device != "cpu" and args.backend != "torch":
        raise UserInputError(f"--device {args.device} runs --backend torch only: add --backend torch")
    if args.engines is not None:
        pipe = from_engines(args.engines)
        if pipe.limits.max_batch is not None and pipe.limits.max_batch < args.batch:
            raise UserInputError(f"--engines {args.engines} was built for batches up to {pipe.limits.max_batch}: "
                                 f"use --batch {pipe.limits.max_batch} or rebuild with --max-batch {args.batch}")
    elif args.backend == "torch":
        pipe = answer_trt.load(args.model, backend="torch", device=args.device)
    else:
        pipe = from_engines(build_cached(args.model, batch=args.batch, backend=args.backend), verify=False)
    draw = pipeline_draw(pipe, args.steps)
    cells = []
    started = time.perf_counter()
    for family in families:
        prompts = [e.objects for e in examples[family]]
        for w in scales:
            def progress(done: int, family: str = family, w: float = w, total: int = len(prompts)) -> None:
                print(f"{family} w={w:g}: {done}/{total} prompts, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)

            if family in inpaints:
                results = run_inpaint_compliance(inpaint_family.inpaint_draw(pipe, args.steps), methods,
                                                 inpaints[family], w, args.batch, progress)
            else:
                results = run_compliance(draw, methods, prompts, w, args.batch, progress)
            cell = Cell(family, w, len(prompts), results)
            print(format_table(cell), flush=True)
            cells.append(cell)
    if args.json is not None:
        model = resolve_model(args.model)
        report = {
            "model": {"name": args.model, "sha256": model.content_hash()},
            "prompts_per_family": args.prompts, "prompt_seed": args.seed, "steps": args.steps,
            "scheduler": pipe.scheduler_config.get("_class_name", "?"),
            "backend": pipe.backend, "device": args.device, "precision": pipe.precision, "batch": args.batch,
            "checker_on_ground_truth": checker,
            "cells": [asdict(c) for c in cells],
            "seconds": time.perf_counter() - started,
            "machine": machine_info(), "versions": library_versions(),
            "command": args.command,
        }
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"compliance: wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
