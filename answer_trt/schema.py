"""The request schema: every generation field defined once.

``GenerateRequest`` is the one definition of what a generation request holds: each
field's name, type, default, bounds, help text, and whether the PNG metadata records
it. Everything else is derived from it:

- ``Pipeline.generate`` / ``request_config`` keywords (unknown ones refused with the
  closest name),
- ``answer-trt generate``'s flags (``add_request_arguments``),
- the HTTP body of ``POST /v1/generate`` (``answer_trt.serving.protocol``),
- the PNG ``parameters`` of every image, and a request rebuilt from them
  (``from_parameters``), so an image can be replayed.

Adding a field is one edit here plus its use (where the sampler or pipeline reads it).
Value checks stay with the configuration they build (``answer_trt.config``), so a bad
value reads the same from every surface. Defaults of the guidance fields are
``GuidanceConfig``'s (one value, read from there).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from answer_trt.config import (
    ANSWER_GUIDANCE_MIN_SIGMA,
    MAX_CLIP_SKIP,
    MAX_DNS_STEPS,
    MAX_IMAGES,
    MAX_SCALE,
    MAX_STEPS,
    METHODS,
    MODES,
    GuidanceConfig,
    SamplingConfig,
)
from answer_trt.errors import UserInputError
from answer_trt.infotext import RECORD, infotext
from answer_trt.rules import check_choice
from answer_trt.samplers import SCHEDULER_NAMES

_GUIDANCE_DEFAULTS = {f.name: f.default for f in fields(GuidanceConfig)}
# How a prompt is read (answer_trt.text): diffusers' plain text, or AUTOMATIC1111's syntax.
PROMPT_SYNTAXES = ("plain", "a1111")


@dataclass(frozen=True)
class FieldInfo:
    """What the schema says of one request field besides its name, type and default.

    ``kind``: ``"str"``, ``"int"``, ``"float"``, ``"bool"`` or ``"ints"`` (a list of integers, each within
    the bounds; comma-separated on the CLI) (the JSON and CLI type); ``nullable``:
    ``None`` is allowed (and means "the default rule"); ``low``/``high``: inclusive bounds
    for numbers (``None``: unbounded); ``choices``: the allowed strings; ``metadata``:
    recorded in each image's PNG ``parameters``; ``cli``: a flag of ``answer-trt generate``."""

    kind: str
    help: str
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    metadata: bool = True
    cli: bool = True

    @property
    def bounds(self) -> str:
        """The bounds in words ("" where there are none)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{self.low:g} .. {self.high:g}"
        if self.low is not None:
            return f">= {self.low:g}"
        return ""


def _field(default: Any, info: FieldInfo) -> Any:
    return field(default=default, metadata={"schema": info})


def _guidance(name: str, info: FieldInfo) -> Any:
    return _field(_GUIDANCE_DEFAULTS[name], info)


@dataclass(frozen=True)
class GenerateRequest:
    """One generation request: the prompt and every field that decides its images."""

    prompt: str = _field("", FieldInfo("str", "text prompt; an empty string means unconditional sampling",
                                       cli=False))
    negative_prompt: str | None = _field(None, FieldInfo(
        "str", "text to steer away from (replaces c_0); absent: the model's empty-prompt condition", nullable=True))
    method: str = _guidance("method", FieldInfo("str", "guidance method", choices=METHODS))
    steps: int = _field(30, FieldInfo("int", "denoising steps", low=1, high=MAX_STEPS))
    guidance_scale: float = _guidance("guidance_scale", FieldInfo("float", "guidance scale w", low=-MAX_SCALE,
                                                                  high=MAX_SCALE))
    negative_scale: float | None = _guidance("negative_scale", FieldInfo(
        "float", "wn (default: 1 for answer, the guidance scale for dns)", nullable=True, low=-MAX_SCALE,
        high=MAX_SCALE))
    dns_steps: int = _guidance("dns_steps", FieldInfo(
        "int", "K: the negative chain's re-anchor period (parallel mode) or DNS iterations (inner mode)", low=1,
        high=MAX_DNS_STEPS))
    mode: str = _guidance("mode", FieldInfo("str", "ANSWER's negative chain: beside x (parallel) or nested (inner)",
                                            choices=MODES))
    chain_min_sigma: float = _guidance("chain_min_sigma", FieldInfo(
        "float", "run the negative chain only while sigma_t >= this; CFG below (variant `interval`)",
        low=0.0, high=1.0))
    guidance_min_sigma: float | None = _guidance("guidance_min_sigma", FieldInfo(
        "float", "guidance off (the prompt's prediction alone, one UNet row) at steps with sigma_t below this "
        f"(variant `guidance interval`; 0: guided at every step; default: {ANSWER_GUIDANCE_MIN_SIGMA:g} for answer, "
        "0 for cfg and dns)", nullable=True, low=0.0, high=1.0))
    drift_tau: float | None = _guidance("drift_tau", FieldInfo(
        "float", "fade the parallel chain's drift term below noise level ~tau (variant `fade`; default off)",
        nullable=True))
    guidance_rescale: float = _guidance("guidance_rescale", FieldInfo(
        "float", "rescale CFG/ANSWER noise to the positive branch's deviation (phi)", low=0.0, high=1.0))
    scheduler: str | None = _field(None, FieldInfo("str", "scheduler or A1111 sampler name (default: the model's "
                                                   "own)", nullable=True, choices=SCHEDULER_NAMES))
    seed: int = _field(0, FieldInfo("int", "seed of the initial noise, as in diffusers", low=0, high=2**64 - 1))
    height: int | None = _field(None, FieldInfo("int", "image height in pixels (default: the model's or the "
                                                "engines')", nullable=True, low=8))
    width: int | None = _field(None, FieldInfo("int", "image width in pixels (default: the model's or the "
                                               "engines')", nullable=True, low=8))
    batch: int = _field(1, FieldInfo("int", "images for this prompt (seeds drawn from one generator, as diffusers "
                                     "with one generator)", low=1, high=MAX_IMAGES))
    seeds: tuple[int, ...] | None = _field(None, FieldInfo(
        "ints", "one seed per image (as diffusers with a list of generators); the batch is their count",
        nullable=True, low=0, high=2**64 - 1))
    clip_skip: int = _field(1, FieldInfo(
        "int", "A1111's clip skip: the text condition from the Nth CLIP layer from the end (1: the last, no skip; "
        "2: the penultimate, through the final layer norm); diffusers' clip_skip keyword counts one less",
        low=1, high=MAX_CLIP_SKIP))
    prompt_syntax: str = _field("plain", FieldInfo(
        "str", "how the prompts are read: plain (diffusers': the text as it is, cut at the tokenizer's 77 tokens) or "
        "a1111 (AUTOMATIC1111's: (word:1.2) emphasis, [word], BREAK, prompts longer than 75 tokens in chunks, "
        "<lora:name:w> tags of the LoRAs the engines were built with)", choices=PROMPT_SYNTAXES))
    # img2img (answer_trt/img2img.py): the input image travels beside the request, named here by its hash.
    strength: float | None = _field(None, FieldInfo(
        "float", "img2img: the share of the steps that redraw --image (diffusers' strength; default 0.8, SDXL 0.3)",
        nullable=True, low=0.0, high=1.0))
    image_sha256: str | None = _field(None, FieldInfo(
        "str", "img2img: the sha256 of the input image's pixels (answer_trt.img2img.image_sha256)", nullable=True,
        cli=False))
    mask_sha256: str | None = _field(None, FieldInfo(
        "str", "inpainting: the sha256 of the mask's pixels (answer_trt.inpaint.load_mask)", nullable=True, cli=False))
    mask_blur: int = _field(0, FieldInfo("int", "inpainting: blur the mask by this Gaussian radius in pixels first",
                                         low=0, high=64))
    # ControlNet (answer_trt/controlnet.py): the control image(s) travel beside the request, named by hash.
    control_image_sha256: str | None = _field(None, FieldInfo(
        "str", "ControlNet: the sha256 of each control image's pixels, comma-separated", nullable=True, cli=False))
    controlnet_conditioning_scale: float | None = _field(None, FieldInfo(
        "float", "ControlNet: the residuals' scale for every ControlNet (diffusers' controlnet_conditioning_scale, "
        "A1111's weight); default: each one's build --controlnet DIR:SCALE", nullable=True, low=0.0, high=2.0))
    control_guidance_start: float = _field(0.0, FieldInfo(
        "float", "ControlNet: the share of the steps before the control starts (diffusers' control_guidance_start)",
        low=0.0, high=1.0))
    control_guidance_end: float = _field(1.0, FieldInfo(
        "float", "ControlNet: the share of the steps after which the control stops (diffusers' control_guidance_end)",
        low=0.0, high=1.0))
    guess_mode: bool = _field(False, FieldInfo(
        "bool", "ControlNet: diffusers' guess mode: only the prompt's rows get the control (the others zero "
        "residuals), scaled from 0.1 at the first block to 1 at the mid block (docs/ANSWER.md, ControlNet)"))

    def __post_init__(self) -> None:
        # Per-image seeds give the batch its size (a list from JSON becomes a tuple). Nothing
        # is checked here: ``sampling_config`` refuses what is wrong, on every surface alike.
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if isinstance(self.seeds, tuple) and self.seeds and self.batch == 1:
            object.__setattr__(self, "batch", len(self.seeds))

    def sampling_config(self) -> SamplingConfig:
        """The validated configuration (``UserInputError`` names the field and the fix).
        Construction checks nothing, so a request can be made first and refused where it is
        submitted, with the same message on every surface."""
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (value is None and name == "negative_prompt"):
                raise UserInputError(f"{name} must be a string, got {type(value).__name__}")
            try:
                (value or "").encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UserInputError(f"{name} is not valid Unicode text (a lone surrogate at character {exc.start}): "
                                     "send UTF-8 text") from None
        if self.scheduler is not None:
            check_choice("scheduler", self.scheduler, SCHEDULER_NAMES)
        self._check_image_fields()
        check_choice("prompt_syntax", self.prompt_syntax, PROMPT_SYNTAXES)
        return SamplingConfig(
            guidance=GuidanceConfig(**{f.name: getattr(self, f.name) for f in fields(GuidanceConfig)}),
            steps=self.steps, scheduler=self.scheduler, seed=self.seed, height=self.height, width=self.width,
            batch=self.batch, seeds=self.seeds, clip_skip=self.clip_skip,
        )

    def _check_image_fields(self) -> None:
        """img2img's and inpainting's values, by themselves (whether an image and a mask come
        with them is the pipeline's check, ``answer_trt.img2img.check_init``)."""
        strength = self.strength
        if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                     or not 0.0 < strength <= 1.0):
            raise UserInputError(f"strength must be a number in (0, 1] (the share of the steps that redraw the image), "
                                 f"got {strength!r}")
        blur = self.mask_blur
        if isinstance(blur, bool) or not isinstance(blur, int) or not 0 <= blur <= 64:
            raise UserInputError(f"mask_blur must be an integer in 0 .. 64 (pixels), got {blur!r}")
        if not isinstance(self.guess_mode, bool):
            raise UserInputError(f"guess_mode must be true or false, got {self.guess_mode!r}")
        for name in ("image_sha256", "mask_sha256", "control_image_sha256"):
            value = getattr(self, name)
            # several ControlNets' images: their hashes, comma-separated (answer_trt.controlnet.ControlImages)
            parts = value.split(",") if isinstance(value, str) and name == "control_image_sha256" else [value]
            if value is not None and not all(isinstance(part, str) and len(part) == 64
                                             and all(c in "0123456789abcdef" for c in part) for part in parts):
                raise UserInputError(f"{name} must be 64 lowercase hex digits (a sha256; ControlNets' images: "
                                     f"comma-separated), got {str(value)[:80]!r}")

    def replace(self, **changes: Any) -> GenerateRequest:
        return dataclasses.replace(self, **changes)

    def keywords(self) -> dict[str, Any]:
        """Every field but the prompt: ``Pipeline.generate(request.prompt, **request.keywords())``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prompt"}


def request_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The schema's fields, in order (``prompt`` first)."""
    return fields(GenerateRequest)


def info(f: dataclasses.Field[Any]) -> FieldInfo:
    schema: FieldInfo = f.metadata["schema"]
    return schema


FIELD_NAMES = tuple(f.name for f in request_fields())


# diffusers' pipeline keywords -> ours, so code written for diffusers runs unchanged.
DIFFUSERS_ALIASES = {"num_inference_steps": "steps", "num_images_per_prompt": "batch"}


def _seed_of(generator: Any) -> int:
    """The seed of a diffusers-style ``torch.Generator``: its initial seed, which draws the
    same noise as diffusers does with a fresh generator."""
    initial_seed = getattr(generator, "initial_seed", None)
    if not callable(initial_seed):
        raise UserInputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return int(initial_seed())


def from_diffusers_keywords(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``keywords`` with diffusers' names (``num_inference_steps``, ``num_images_per_prompt``,
    ``generator``) turned into the schema's; a name given both ways is refused."""
    fields = dict(keywords)
    for theirs, ours in (*DIFFUSERS_ALIASES.items(), ("generator", "seed")):
        if theirs in fields:
            if ours in fields:
                raise UserInputError(f"{theirs} and {ours} say the same thing: pass one of them")
            value = fields.pop(theirs)
            if theirs != "generator":
                fields[ours] = value
            elif isinstance(value, (list, tuple)) and len(value) > 1:  # one generator per image
                fields["seeds"] = tuple(_seed_of(g) for g in value)
            elif isinstance(value, (list, tuple)):  # a list of one: the batch's one generator
                fields[ours] = _seed_of(value[0]) if value else _seed_of(None)
            else:
                fields[ours] = _seed_of(value)
    return fields


def make_request(prompt: str, keywords: Mapping[str, Any]) -> GenerateRequest:
    """``GenerateRequest(prompt, **keywords)``, refusing an unknown keyword in one line that
    names the closest field. diffusers' keyword names are accepted too (``from_diffusers_keywords``)."""
    keywords = from_diffusers_keywords(keywords)
    for name in keywords:
        if name not in FIELD_NAMES or name == "prompt":
            close = difflib.get_close_matches(name, (*FIELD_NAMES, *DIFFUSERS_ALIASES, "generator"), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserInputError(f"unknown argument {name!r}: {hint}the fields are {', '.join(FIELD_NAMES[1:])}")
    return GenerateRequest(prompt, **{name: _plain(value) for name, value in keywords.items()})


def _plain(value: Any) -> Any:
    """numpy's (and any other) integers and reals as Python's own, so that checks, JSON
    metadata and seeds treat them alike; bools and everything else unchanged."""
    if isinstance(value, bool) or isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):  # a list field (``seeds``): a tuple, so requests compare and hash
        return tuple(_plain(v) for v in value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def parameters(request: GenerateRequest, resolved: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, str]:
    """The PNG text chunks of an image: every ``metadata`` field of ``request`` (with the
    values the pipeline ``resolved``, e.g. the default size), then ``extra`` (model,
    backend, ...), each as text; all of them as JSON in ``infotext.RECORD`` (what replay
    reads), and as A1111's infotext in ``parameters`` (what PNG readers show)."""
    params: dict[str, Any] = {}
    for f in request_fields():
        if info(f).metadata:
            params[f.name] = resolved.get(f.name, getattr(request, f.name))
    params.update(extra)
    text = {k: "" if v is None else str(v) for k, v in params.items()}
    record = json.loads(json.dumps(params, sort_keys=True))  # as a reader of the JSON sees it (tuples: lists)
    text[RECORD] = json.dumps(record, sort_keys=True)
    text["parameters"] = infotext(record)
    return text


def field_kinds() -> dict[str, str]:
    """Each request field's kind (``FieldInfo.kind``): how a value written as text is read."""
    return {f.name: info(f).kind for f in request_fields()}


def from_parameters(params: str | Mapping[str, Any]) -> GenerateRequest:
    """The request an image's record (``infotext.RECORD``: JSON text, or the decoded object) holds:
    its schema fields; other keys (model, backend, ...) are ignored. Raises
    ``UserInputError`` when the text is not such a record."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except (ValueError, RecursionError):
            raise UserInputError("the image's parameters are not JSON: it was not written by answer-trt") from None
    if not isinstance(params, Mapping) or "prompt" not in params:
        raise UserInputError("the image's parameters hold no prompt: it was not written by answer-trt")
    return GenerateRequest(**{name: _plain(params[name]) for name in FIELD_NAMES if name in params})
