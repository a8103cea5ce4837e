"""What ``answer-trt build`` is asked for: a frozen, validated request, and the command
line that replays it.

It lives in the runtime so that the CLI and the loaders can make one without loading
the export stage, and so that every rebuild hint (manifest, loaders, shape checks,
TensorRT plan mismatch) is rendered by one ``command()`` from what a folder was built
with (``Manifest.build_config``). It imports no manifest: the manifest imports it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from answer_trt.errors import UserInputError
from answer_trt.iospec import COMPONENT_SETS, DEFAULT_PROMPT_CHUNKS, SizeRange
from answer_trt.rules import (
    BF16_BACKENDS,
    BUILD_BACKENDS,
    DEFAULT_MAX_BATCH,
    DEVICES,
    PRECISIONS,
    check_choice,
    check_int,
    check_size,
    check_size_range,
    check_variant,
    default_precision,
)

MAX_PROMPT_CHUNKS = 32  # --max-prompt-chunks: 2400 tokens of CLIP, beyond any prompt written by hand
MAX_LORA_SCALE = 10.0  # |SCALE| of one --lora; 0..1.5 is usual, negative scales invert an adapter


def split_scale(text: str, flag: str, what: str, exists: bool) -> tuple[Path, float | None]:
    """``PATH`` or ``PATH:SCALE`` of a ``flag`` (``--lora FILE:0.8``): the last ``:`` splits them,
    unless the whole ``text`` names an existing path (``exists``) or what follows the ``:`` is a
    path, as in ``C:\\loras\\a.safetensors``. Scale None: none given. ``UserInputError`` where
    the scale is not a number."""
    head, colon, tail = text.rpartition(":")
    if not colon or not head or "/" in tail or "\\" in tail or exists:
        return Path(text), None
    try:
        return Path(head), float(tail)
    except ValueError:
        raise UserInputError(f"{flag} {text}: SCALE {tail!r} is not a number: write {what} or {what}:SCALE, "
                             f"e.g. {flag} {head}:0.8") from None


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora FILE[:SCALE]``: a LoRA adapter file, fused into the weights with ``scale``
    before export (``answer_trt.models.lora``). Validated on construction (``UserInputError``)."""

    path: Path
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise UserInputError(f"--lora {self.path}: the scale must be a number, got {type(self.scale).__name__}")
        scale = float(self.scale)
        if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
            raise UserInputError(f"--lora {self.path}:{self.scale}: SCALE must be a number in "
                                 f"{-MAX_LORA_SCALE:g} .. {MAX_LORA_SCALE:g} (1 fuses the adapter as trained)")
        object.__setattr__(self, "scale", scale)

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``FILE`` or ``FILE:SCALE`` (the last ``:`` splits them, unless ``text`` names an
        existing file or what follows it is a path, as in ``C:\\loras\\a.safetensors``)."""
        path, scale = split_scale(text, "--lora", "FILE", Path(text).is_file())
        return cls(path) if scale is None else cls(path, scale)

    def argument(self) -> str:
        """The ``--lora`` value that gives this adapter again (``FILE:SCALE``)."""
        return f"{self.path}:{self.scale!r}"


# --controlnet DIR:SCALE: diffusers' controlnet_conditioning_scale, bounded as the issue asks.
MAX_CONTROLNET_SCALE = 2.0
# The most ControlNets one folder is built with (``iospec.CONTROLNETS``).
MAX_CONTROLNETS = 4

@dataclass(frozen=True)
class ControlNetSpec:
    """One ``--controlnet DIR[:SCALE]``: a diffusers ControlNet folder and its conditioning
    scale (diffusers' ``controlnet_conditioning_scale``, 0..2). Validated on construction."""

    path: Path
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise UserInputError(f"--controlnet {self.path}: the scale must be a number, got "
                                 f"{type(self.scale).__name__}")
        scale = float(self.scale)
        if not math.isfinite(scale) or not 0.0 <= scale <= MAX_CONTROLNET_SCALE:
            raise UserInputError(f"--controlnet {self.path}:{self.scale}: SCALE must be a number in 0 .. "
                                 f"{MAX_CONTROLNET_SCALE:g} (1: the residuals as trained)")
        object.__setattr__(self, "scale", scale)

    @classmethod
    def parse(cls, text: str) -> ControlNetSpec:
        """``DIR`` or ``DIR:SCALE`` (the last ``:`` splits them unless ``text`` is an existing folder)."""
        path, scale = split_scale(text, "--controlnet", "DIR", Path(text).is_dir())
        return cls(path) if scale is None else cls(path, scale)

    def argument(self) -> str:
        """The ``--controlnet`` value that gives this ControlNet again (``DIR:SCALE``)."""
        return f"{self.path}:{self.scale!r}"


def lora_specs(loras: object) -> tuple[LoraSpec, ...]:
    """The Python API's ``loras=``: a list of ``"FILE[:SCALE]"`` strings, paths, ``(path, scale)``
    pairs or ``LoraSpec`` values (one alone is taken as a list of one); None: none."""
    if loras is None:
        return ()
    if isinstance(loras, (str, PathLike, LoraSpec)):
        loras = [loras]
    if not isinstance(loras, (list, tuple)):
        raise UserInputError(f"loras takes a list of 'FILE[:SCALE]' strings, paths or (path, scale) pairs, got "
                             f"{type(loras).__name__}: e.g. loras=['style.safetensors:0.8']")
    specs = []
    for item in loras:
        if isinstance(item, LoraSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(LoraSpec.parse(item))
        elif isinstance(item, PathLike):
            specs.append(LoraSpec(Path(item)))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (str, PathLike)):
            specs.append(LoraSpec(Path(item[0]), item[1]))
        else:
            raise UserInputError(f"loras: {item!r} is not a 'FILE[:SCALE]' string, a path or a (path, scale) pair")
    return tuple(specs)


def build_precision(backend: str, device: str = "cpu", precision: str | None = None) -> str:
    """``precision``, or what a build of ``backend`` for ``device`` gets without one
    (``rules.default_precision``; openvino asks OpenVINO whether this CPU has native bf16, so a
    machine without OpenVINO gets its one install line here)."""
    if precision is not None:
        return precision
    native_bf16 = False
    if backend == "openvino":
        from answer_trt.backends.openvino import has_native_bf16

        native_bf16 = has_native_bf16()
    return default_precision(backend, device, native_bf16)


@dataclass(frozen=True)
class BuildConfig:
    """One ``answer-trt build`` request, validated on construction (``UserInputError``)."""

    model: str = "tiny"
    out: Path = Path("engines/tiny")
    backend: str = "onnxruntime"
    precision: str | None = None  # None: rules.default_precision of the backend and device
    max_batch: int = DEFAULT_MAX_BATCH
    height: SizeRange | int | None = None  # None: the model's default size
    width: SizeRange | int | None = None
    force: bool = False
    check: bool | None = None  # the post-build accuracy check; None: on for fp16 and bf16, off for fp32
    # Build-time graph optimization (export/graph_optimize.py), onnxruntime only; None: off
    # (measured: no gain on the CPU, benchmarks/README.md).
    optimize: bool | None = None
    # The model's weights variant (`fp16` for unet/diffusion_pytorch_model.fp16.safetensors);
    # None: the plain weights, or the one variant a folder holds them as (models/weight_files.py).
    variant: str | None = None
    # LoRA adapters fused into the weights before export, in this order (models/lora.py).
    loras: tuple[LoraSpec, ...] = ()
    # Where the artifacts run: inductor compiles for the CPU or a CUDA GPU; ONNX Runtime
    # engines are "cpu" (their provider is chosen at load), TensorRT plans always CUDA.
    device: str = "cpu"
    # A single-file --model: the diffusers folder or hub id whose configs and tokenizer it is
    # converted with (`--config`; models/single_file.py); None: diffusers' default for its family.
    model_config: str | None = None
    # Which components to build (``iospec.COMPONENT_SETS``): ``all`` (default) adds the VAE
    # encoder that img2img and inpainting need to the text-to-image three (``txt2img``).
    components: str = "all"
    # ControlNets exported beside the UNet, which then takes their residuals (models/controlnet.py).
    controlnets: tuple[ControlNetSpec, ...] = ()
    # Chunks of the text encoder's length (75 tokens + start and end for CLIP) the UNet's text axis
    # takes: A1111's long prompts (prompt_syntax a1111) up to this many chunks.
    max_prompt_chunks: int = DEFAULT_PROMPT_CHUNKS
    # `--vae FILE|DIR`: a VAE in place of the model's own (models/vae_file.py); None: the model's.
    vae: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "loras", tuple(self.loras))
        if not all(isinstance(lora, LoraSpec) for lora in self.loras):
            raise UserInputError("loras must be LoraSpec values (LoraSpec.parse('FILE:SCALE'))")
        object.__setattr__(self, "controlnets", tuple(self.controlnets))
        if not all(isinstance(c, ControlNetSpec) for c in self.controlnets):
            raise UserInputError("controlnets must be ControlNetSpec values (ControlNetSpec.parse('DIR:SCALE'))")
        if len(self.controlnets) > MAX_CONTROLNETS:
            raise UserInputError(f"{len(self.controlnets)} --controlnet folders: one build takes at most "
                                 f"{MAX_CONTROLNETS}")
        if self.controlnets and self.backend == "inductor":
            raise UserInputError("--controlnet builds tensorrt or onnxruntime engines: use --backend tensorrt or "
                                 "onnxruntime")
        check_choice("backend", self.backend, BUILD_BACKENDS)
        check_choice("device", self.device, DEVICES)
        check_choice("components", self.components, tuple(COMPONENT_SETS))
        if self.device != "cpu" and self.backend != "inductor":
            raise UserInputError(f"--device {self.device} chooses what --backend inductor compiles for: TensorRT plans "
                                 "always run on CUDA and ONNX Runtime graphs pick their provider at load; drop "
                                 "--device, or add --backend inductor")
        if self.precision is None:
            object.__setattr__(self, "precision", build_precision(self.backend, self.device))
        check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.backend not in BF16_BACKENDS:
            raise UserInputError("--precision bf16 needs --backend tensorrt, inductor or openvino; use fp32 or fp16 "
                                 "with onnxruntime")
        if self.precision == "fp16" and self.backend == "openvino":
            raise UserInputError("--backend openvino runs fp32 or bf16 on the CPU: use --precision fp32 or bf16")
        check_int("--max-batch", self.max_batch)
        check_int("--max-prompt-chunks", self.max_prompt_chunks)
        if self.max_prompt_chunks > MAX_PROMPT_CHUNKS:
            raise UserInputError(f"--max-prompt-chunks {self.max_prompt_chunks}: at most {MAX_PROMPT_CHUNKS} chunks "
                                 f"({MAX_PROMPT_CHUNKS * 75} tokens of CLIP) are built")
        if self.variant is not None:
            check_variant(self.variant)
        if self.optimize and self.backend != "onnxruntime":
            raise UserInputError("--optimize rewrites ONNX Runtime graphs: TensorRT optimizes its plans itself; "
                                 "drop --optimize or use --backend onnxruntime")
        for side in ("height", "width"):
            value = getattr(self, side)
            if isinstance(value, SizeRange):
                check_size_range(f"--{side}", value, multiple=1)
            elif value is not None:
                check_size(f"--{side}", value, multiple=1)

    @property
    def checks_accuracy(self) -> bool:
        """Whether the build runs the accuracy check (``--check``/``--no-check``; by default
        for the half-precision builds, whose errors are worth measuring)."""
        return self.check if self.check is not None else self.precision != "fp32"

    @property
    def compiles_for_gpu(self) -> bool:
        """Whether the artifacts are compiled for this machine's GPU (TensorRT plans, inductor
        CUDA packages): its compute capability goes into the build key and the manifest."""
        return self.backend == "tensorrt" or (self.backend == "inductor" and self.device == "cuda")

    @property
    def optimizes_graphs(self) -> bool:
        """Whether the build runs ONNX Runtime's transformer optimizer on its graphs."""
        return bool(self.optimize)

    def command(self) -> str:
        """The ``answer-trt build`` command line with every flag of this request, so that
        a rebuild makes the same kind of folder (backend, precision, sizes, batch, weights)."""
        words = ["answer-trt", "build", "--model", self.model, "--out", str(self.out), "--backend", self.backend,
                 "--precision", str(self.precision), "--max-batch", str(self.max_batch)]
        if self.device != "cpu":
            words += ["--device", self.device]
        if self.components != "all":
            words += ["--components", self.components]
        if self.max_prompt_chunks != DEFAULT_PROMPT_CHUNKS:
            words += ["--max-prompt-chunks", str(self.max_prompt_chunks)]
        if self.variant is not None:
            words += ["--variant", self.variant]
        if self.model_config is not None:
            words += ["--config", self.model_config]
        for lora in self.loras:
            words += ["--lora", lora.argument()]
        if self.vae is not None:
            words += ["--vae", self.vae]
        for controlnet in self.controlnets:
            words += ["--controlnet", controlnet.argument()]
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None:
                words += [f"--{side}", str(value)]
        if self.check is not None:
            words.append("--check" if self.check else "--no-check")
        if self.optimize is not None:
            words.append("--optimize" if self.optimize else "--no-optimize")
        if self.force:
            words.append("--force")
        return shlex.join(words)
