"""Frozen configuration of one generation request, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from answer_trt.errors import UserInputError

METHODS = ("answer", "cfg", "dns")
MODES = ("parallel", "inner")
# --scheduler names -> diffusers classes; without one, the model's own scheduler runs.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",  # DPM-Solver++ (2M), multistep
}


@dataclass(frozen=True)
class GuidanceConfig:
    """How each step combines the branches (ANSWER.md, "Parameters and defaults").

    ``negative_scale`` (wn) defaults to ``guidance_scale`` (w); ``dns_steps`` is K.
    """

    method: str = "answer"
    guidance_scale: float = 7.5
    negative_scale: float | None = None
    dns_steps: int = 4
    mode: str = "parallel"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise UserInputError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if isinstance(self.dns_steps, bool) or not isinstance(self.dns_steps, int) or self.dns_steps < 1:
            raise UserInputError(f"dns-steps must be an integer >= 1, got {self.dns_steps!r}")
        if self.negative_scale is not None and self.negative_scale <= -1.0:
            raise UserInputError(f"negative-scale must be > -1, got {self.negative_scale}")

    @property
    def wn(self) -> float:
        return self.guidance_scale if self.negative_scale is None else self.negative_scale


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

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UserInputError(f"steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise UserInputError(f"batch must be an integer >= 1, got {self.batch!r}")
        for side, value in (("height", self.height), ("width", self.width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 8):
                raise UserInputError(f"{side} must be a positive multiple of 8, got {value!r}")
