"""Frozen configuration of one generation request, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from answer_trt.errors import UserInputError
from answer_trt.rules import check_int, check_seed, check_size

METHODS = ("answer", "cfg", "dns")
MODES = ("parallel", "inner")
# --scheduler names -> diffusers classes; without one, the model's own scheduler runs.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",  # DPM-Solver++ (2M), multistep
}


# Bounds checked before any work. Steps: the schedulers we run are trained on a grid of
# 1000 timesteps and cannot take more distinct ones (DDIM refuses beyond it; Euler would
# only repeat levels, at 1000x the time). Images per request: the CLI writes one file per
# image and the memory check sizes the batch per model; 256 is far above what a GPU of
# today holds at SD sizes, and stops a typo (--batch 2000000) before anything is allocated.
MAX_STEPS = 1000
# K (dns_steps): inner mode runs K DNS iterations per step, so it scales work as steps do.
MAX_DNS_STEPS = 1000
MAX_IMAGES = 256
# A1111's clip skip slider ends at 12 (CLIP ViT-L has 12 layers).
MAX_CLIP_SKIP = 12
# Guidance scales (w, wn): useful settings lie within about 0..20; beyond 100 the guided
# noise leaves the range any UNet was trained on and the latents overflow to NaN.
MAX_SCALE = 100.0

# ANSWER's default wn and interval, chosen by the compliance suite (docs/ANSWER.md, "Defaults").
ANSWER_NEGATIVE_SCALE = 1.0
# Guidance off below this sigma_t, per method (variant "guidance interval"): CFG and DNS keep
# diffusers' behaviour (0, guided at every step) whatever ANSWER's is. ANSWER's is 0.7, chosen by
# issue 37's confirmation on fresh prompts (both trained models, 7 families, w = 3, 5, 7.5; better
# pooled than 0 (guided everywhere), 0.3 and 0.5, worse in no cell; docs/ANSWER.md "Defaults").
ANSWER_GUIDANCE_MIN_SIGMA = 0.7


@dataclass(frozen=True)
class GuidanceConfig:
    """How each step combines the branches (docs/ANSWER.md, "Parameters and defaults").

    ``negative_scale`` (wn) defaults to ``ANSWER_NEGATIVE_SCALE`` for ANSWER and to
    ``guidance_scale`` (w) for DNS (docs/ANSWER.md, "Defaults"); ``dns_steps`` is K. The
    variants (docs/ANSWER.md, "Variants"): ``chain_min_sigma`` runs the negative chain only
    while sigma_t >= it and re-anchors at every step below (ANSWER is CFG there);
    ``drift_tau`` fades the chain's drift term (parallel mode); ``guidance_rescale`` (phi)
    rescales the guided noise of CFG and ANSWER to the positive branch's deviation;
    ``guidance_min_sigma`` turns guidance off (the conditional prediction alone, one row)
    at steps whose sigma_t is below it (0: guided everywhere); left as None it resolves per
    method (``interval_min_sigma``: ``ANSWER_GUIDANCE_MIN_SIGMA`` for ANSWER, 0 for CFG and DNS).
    """

    method: str = "answer"
    guidance_scale: float = 7.5
    negative_scale: float | None = None
    dns_steps: int = 4
    mode: str = "parallel"
    chain_min_sigma: float = 0.5
    drift_tau: float | None = None
    guidance_rescale: float = 0.0
    guidance_min_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise UserInputError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        check_int("dns-steps", self.dns_steps)
        if self.dns_steps > MAX_DNS_STEPS:
            raise UserInputError(f"dns-steps must be at most {MAX_DNS_STEPS}, got {self.dns_steps}")
        _check_scale("guidance-scale", self.guidance_scale)
        if self.negative_scale is not None:
            _check_scale("negative-scale", self.negative_scale)
        if self.method != "cfg" and self.wn <= -1.0:
            which = "negative-scale" if self.negative_scale is not None else "guidance-scale (DNS's wn defaults to it)"
            raise UserInputError(f"{which} must be > -1 for {self.method}, got {self.wn}: "
                                 "ANSWER's scale (w + wn) / (1 + wn) needs 1 + wn > 0")
        _check_number("chain-min-sigma", self.chain_min_sigma)
        if not 0.0 <= self.chain_min_sigma < 1.0:
            raise UserInputError(
                f"chain-min-sigma must be in [0, 1) (a noise level sigma_t), got {self.chain_min_sigma}")
        if self.drift_tau is not None:
            _check_number("drift-tau", self.drift_tau)
            if self.drift_tau <= 0.0:
                raise UserInputError(f"drift-tau must be > 0 (or left out), got {self.drift_tau}")
            if self.mode != "parallel":
                raise UserInputError("drift-tau fades the parallel chain's drift: use it with --mode parallel")
        _check_number("guidance-rescale", self.guidance_rescale)
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise UserInputError(f"guidance-rescale must be in [0, 1], got {self.guidance_rescale}")
        if self.guidance_min_sigma is not None:
            _check_number("guidance-min-sigma", self.guidance_min_sigma)
            if not 0.0 <= self.guidance_min_sigma < 1.0:
                raise UserInputError(
                    f"guidance-min-sigma must be in [0, 1) (a noise level sigma_t), got {self.guidance_min_sigma}")

    @property
    def wn(self) -> float:
        if self.negative_scale is not None:
            return self.negative_scale
        return ANSWER_NEGATIVE_SCALE if self.method == "answer" else self.guidance_scale

    @property
    def interval_min_sigma(self) -> float:
        """The noise level sigma_t below which guidance is off: ``guidance_min_sigma`` where
        given, else the method's default (``ANSWER_GUIDANCE_MIN_SIGMA`` for ANSWER; 0, diffusers'
        CFG, for CFG and DNS)."""
        if self.guidance_min_sigma is not None:
            return self.guidance_min_sigma
        return ANSWER_GUIDANCE_MIN_SIGMA if self.method == "answer" else 0.0


def _check_scale(name: str, value: object) -> None:
    _check_number(name, value)
    if abs(cast(float, value)) > MAX_SCALE:
        raise UserInputError(f"{name} must be within -{MAX_SCALE:g} .. {MAX_SCALE:g} (useful values lie within "
                             f"about 0 .. 20), got {value:g}")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"{name} must be a finite number, got {value!r}")


DEFAULT_GUIDANCE = GuidanceConfig()


@dataclass(frozen=True)
class SamplingConfig:
    """Everything besides the prompt that decides a generated image."""

    guidance: GuidanceConfig = GuidanceConfig()
    steps: int = 30
    scheduler: str | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    batch: int = 1
    # One seed per image (diffusers' list of generators): image i's noise is drawn from its own
    # generator; ``batch`` is their count. None: ``batch`` images from one generator of ``seed``.
    seeds: tuple[int, ...] | None = None
    # A1111's clip skip: the text condition is the output of the clip_skip-th CLIP layer from
    # the end (1: the last, as without it), for the prompt and the negative prompt alike.
    clip_skip: int = 1

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_int("clip_skip", self.clip_skip)
        if self.clip_skip > MAX_CLIP_SKIP:
            raise UserInputError(f"clip_skip must be at most {MAX_CLIP_SKIP} (CLIP layers from the end, as A1111 "
                                 f"counts them; 1: no skip), got {self.clip_skip}")
        check_int("batch", self.batch)
        if self.seeds is not None:
            if not isinstance(self.seeds, tuple) or not self.seeds:
                raise UserInputError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
            for seed in self.seeds:
                check_seed(seed)
            if len(self.seeds) != self.batch:
                raise UserInputError(f"seeds gives {len(self.seeds)} seeds for a batch of {self.batch}: one seed per "
                                     "image (leave the batch out: it is the number of seeds)")
        if self.steps > MAX_STEPS:
            raise UserInputError(f"steps must be at most {MAX_STEPS} (the schedulers' training grid), got {self.steps}")
        if self.batch > MAX_IMAGES:
            raise UserInputError(f"batch must be at most {MAX_IMAGES} images per request, got {self.batch}: "
                                 "split it into several requests")
        check_seed(self.seed)
        for side, value in (("height", self.height), ("width", self.width)):
            if value is not None:
                check_size(side, value)
