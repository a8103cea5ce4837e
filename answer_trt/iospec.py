"""The IO spec: the one table of tensor names, shapes and dtypes per component.

Dynamic axes, sample inputs, optimization profiles, runtime feed names and shape
checks are all derived from it. Shapes mix fixed sizes (ints) with symbols (str)
that a request binds: ``batch``, ``latent_height``/``latent_width``,
``image_height``/``image_width`` and ``text_length`` (the UNet's text tokens: the text
encoder's length times the prompt's chunks, A1111's long prompts).

The runtime owns this contract: its engines feed and check tensors by it, and the
export stage (``export/``) builds graphs and plans to it. It imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from answer_trt.errors import UserInputError

Dim = int | str
Profile = dict[str, tuple[int, int, int]]  # symbol -> (min, opt, max)

TEXT_ENCODER, UNET, VAE_DECODER = "text_encoder", "unet", "vae_decoder"
# The VAE encoder (img2img, inpainting): optional in a folder (``answer-trt build --components``).
VAE_ENCODER = "vae_encoder"
# ControlNets (``--controlnet``, answer_trt/controlnet.py): one component each, in the folder only
# where built with them (``ModelDims.controlnets``), whose UNet then takes their residuals.
CONTROLNETS = tuple(f"controlnet_{i}" for i in range(4))
COMPONENTS = (TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER, *CONTROLNETS)
# What each ``--components`` choice builds; every folder has the text-to-image three.
COMPONENT_SETS = {"txt2img": (TEXT_ENCODER, UNET, VAE_DECODER), "all": COMPONENTS[:4]}
REQUIRED_COMPONENTS = COMPONENT_SETS["txt2img"]

# Branches stacked in one UNet call: ANSWER parallel sends (x,c_p), (z,c_p), (z,c_0).
MAX_BRANCHES = 3
# Text encoder calls encode the prompt and the negative (or empty) prompt together.
TEXT_BRANCHES = 2
# Chunks of text_max_length tokens the UNet's text axis takes by default (A1111's long prompts:
# 3 x 75 = 225 tokens); ``answer-trt build --max-prompt-chunks`` sets it.
DEFAULT_PROMPT_CHUNKS = 3
# The symbol of the UNet's text axis (encoder_hidden_states' tokens): a multiple of text_max_length.
TEXT_LENGTH = "text_length"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "int64"

    def bind(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for tensor in (*self.inputs, *self.outputs):
            seen.update((d, None) for d in tensor.shape if isinstance(d, str))
        return list(seen)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes: every symbolic dim of every tensor."""
        return {
            t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }

    def with_dtype(self, float_dtype: str) -> ComponentSpec:
        """The same spec with its floating tensors in ``float_dtype`` (for fp16 builds)."""

        def convert(tensors: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t.name, t.shape, float_dtype if t.dtype.startswith("float") else t.dtype) for t in tensors
            )

        return ComponentSpec(self.name, convert(self.inputs), convert(self.outputs))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComponentSpec:
        def tensors(items: list[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in items)

        return cls(data["name"], tensors(data["inputs"]), tensors(data["outputs"]))


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a model that its component specs depend on."""

    text_max_length: int
    text_hidden_size: int
    latent_channels: int
    vae_scale_factor: int
    default_latent_size: int
    # SDXL: the second text encoder's pooled embedding and the six micro-conditioning
    # time ids (original size, crop top-left, target size) join the UNet's inputs.
    pooled_size: int = 0
    time_ids_size: int = 0
    # diffusers' UNet2DConditionModel.default_overall_up_factor: 2 ** the number of its
    # down-sampling stages (len(block_out_channels) - 1). A latent side that is not a
    # multiple of it makes the skip connections' shapes disagree (diffusers' eager UNet
    # then upsamples to a given size; the exported graphs cannot). 1 in manifests written
    # before it was recorded.
    unet_overall_up_factor: int = 1
    # The (first) text encoder's layer count, bounding clip skip; 0 in manifests written before
    # it was recorded (those folders are rebuilt anyway: their text encoder lacks clip_skip).
    text_layers: int = 0
    # An inpainting UNet (diffusers' 9 input channels): it reads the latent mask (1 channel) and
    # the masked image's latents (latent_channels) beside the latents (``MASK``,
    # ``MASKED_IMAGE_LATENTS``); detected from the UNet config (in_channels > out_channels).
    inpaint_unet: bool = False
    # Built with ``--controlnet``: how many ControlNets, and ``(channels, down factor)`` of each
    # residual they add (the down blocks', then the mid block's; models/controlnet.residual_layout).
    controlnets: int = 0
    control_residuals: tuple[tuple[int, int], ...] = ()
    # SDXL: the first text encoder's share of text_hidden_size (the condition is both encoders'
    # states side by side; A1111's emphasis rescales each encoder's on its own). 0: one encoder,
    # or a manifest written before it was recorded.
    first_text_hidden_size: int = 0

    @property
    def text_hidden_sizes(self) -> tuple[int, ...]:
        """The widths of each text encoder's part of the condition's last axis."""
        first = self.first_text_hidden_size
        return (first, self.text_hidden_size - first) if 0 < first < self.text_hidden_size else (self.text_hidden_size,)

    @property
    def max_clip_skip(self) -> int:
        """The largest clip skip this model takes: one per layer, less one for SDXL (whose
        condition is the penultimate layer's already); 12 where the layer count is unknown."""
        if not self.text_layers:
            return 12
        return max(self.text_layers - (1 if self.pooled_size else 0), 1)

    @property
    def text_encoders(self) -> int:
        return 2 if self.pooled_size else 1

    @property
    def size_multiple(self) -> int:
        """What every image side must be a multiple of: the VAE's factor times the UNet's
        (``rules.check_size`` takes it). 8 x 8 = 64 px for SD 1.x, 2.x and XL."""
        return self.vae_scale_factor * self.unet_overall_up_factor

    @property
    def default_image_size(self) -> int:
        return self.default_latent_size * self.vae_scale_factor

    def bind(self, batch: int, height: int, width: int, chunks: int = 1) -> dict[str, int]:
        """Values of every symbol for ``batch`` images of ``height`` x ``width`` pixels, with
        text conditions of ``chunks`` chunks."""
        latent_height, latent_width = height // self.vae_scale_factor, width // self.vae_scale_factor
        bound = {"batch": batch, "image_height": height, "image_width": width, "latent_height": latent_height,
                 "latent_width": latent_width, TEXT_LENGTH: self.text_max_length * chunks}
        for factor in {f for _, f in self.control_residuals if f > 1}:  # ControlNet residuals' sides
            bound[f"latent_height_{factor}"], bound[f"latent_width_{factor}"] = (latent_height // factor,
                                                                                latent_width // factor)
        return bound


# Names of the text-condition inputs of the UNet, per field of ``TextCondition``.
HIDDEN, POOLED, TIME_IDS = "encoder_hidden_states", "text_embeds", "time_ids"
# An inpainting UNet's further inputs (``ModelDims.inpaint_unet``), concatenated after the latents
# on the channel axis inside the graph, as diffusers' inpaint pipelines concatenate them.
MASK, MASKED_IMAGE_LATENTS = "mask", "masked_image_latents"
# The VAE encoder's outputs: the mean and standard deviation of diffusers'
# ``AutoencoderKL.encode(images).latent_dist`` (its log-variance clamped to [-30, 20] as
# ``DiagonalGaussianDistribution`` does), times the VAE's scaling factor: the distribution of the
# latents the UNet sees (the decoder graph divides by the factor in the same way). The runtime
# samples ``mean + std * noise`` with the request's generator (``answer_trt.img2img``), as
# diffusers' ``retrieve_latents`` does.
LATENT_MEAN, LATENT_STD = "latent_mean", "latent_std"
# A ControlNet's control image ``[B, 3, H, W]`` in [0, 1] and per-row conditioning scale ``[B]``
# (0 outside control_guidance_start/end); its outputs, the UNet's further inputs: one residual per
# down-block output (``down_block_res_{i}``) and the mid block's.
CONTROL_IMAGE, CONDITIONING_SCALE, MID_RESIDUAL = "controlnet_cond", "conditioning_scale", "mid_block_res"
# Names of the text encoder's outputs.
TEXT_EMBEDDINGS, POOLED_EMBEDDINGS = "text_embeddings", "pooled_embeddings"
# The text encoder's per-row clip skip (A1111's meaning; 1: the last layer).
CLIP_SKIP = "clip_skip"


def input_ids_name(index: int) -> str:
    """``input_ids`` for the first tokenizer, ``input_ids_2`` for SDXL's second."""
    return "input_ids" if index == 0 else f"input_ids_{index + 1}"


def control_residual_specs(dims: ModelDims) -> tuple[TensorSpec, ...]:
    """The residuals a ControlNet gives and its UNet takes (``ModelDims.control_residuals``)."""
    def side(axis: str, factor: int) -> str:
        return axis if factor == 1 else f"{axis}_{factor}"

    names = [f"down_block_res_{i}" for i in range(len(dims.control_residuals) - 1)] + [MID_RESIDUAL]
    return tuple(TensorSpec(name, ("batch", channels, side("latent_height", f), side("latent_width", f)), "float32")
                 for name, (channels, f) in zip(names, dims.control_residuals))


def component_specs(dims: ModelDims) -> dict[str, ComponentSpec]:
    latent = ("batch", dims.latent_channels, "latent_height", "latent_width")
    text = ("batch", dims.text_max_length, dims.text_hidden_size)
    text_outputs = [TensorSpec(TEXT_EMBEDDINGS, text, "float32")]
    unet_text = ("batch", TEXT_LENGTH, dims.text_hidden_size)  # the chunks of a long prompt, concatenated
    added_unet_inputs = []
    inpaint_inputs = []
    if dims.inpaint_unet:
        inpaint_inputs = [TensorSpec(MASK, ("batch", 1, "latent_height", "latent_width"), "float32"),
                          TensorSpec(MASKED_IMAGE_LATENTS, latent, "float32")]
    if dims.pooled_size:
        text_outputs.append(TensorSpec(POOLED_EMBEDDINGS, ("batch", dims.pooled_size), "float32"))
        added_unet_inputs = [
            TensorSpec(POOLED, ("batch", dims.pooled_size), "float32"),
            TensorSpec(TIME_IDS, ("batch", dims.time_ids_size), "float32"),
        ]
    return {
        TEXT_ENCODER: ComponentSpec(
            TEXT_ENCODER,
            inputs=(
                *(TensorSpec(input_ids_name(i), ("batch", dims.text_max_length), "int64")
                  for i in range(dims.text_encoders)),
                TensorSpec(CLIP_SKIP, ("batch",), "int64"),
            ),
            outputs=tuple(text_outputs),
        ),
        UNET: ComponentSpec(
            UNET,
            inputs=(
                TensorSpec("sample", latent, "float32"),
                TensorSpec("timestep", ("batch",), "float32"),
                TensorSpec(HIDDEN, unet_text, "float32"),
                *added_unet_inputs,
                *inpaint_inputs,
                *(control_residual_specs(dims) if dims.controlnets else ()),
            ),
            outputs=(TensorSpec("noise_pred", latent, "float32"),),
        ),
        VAE_DECODER: ComponentSpec(
            VAE_DECODER,
            inputs=(TensorSpec("latent", latent, "float32"),),
            outputs=(TensorSpec("images", ("batch", 3, "image_height", "image_width"), "float32"),),
        ),
        VAE_ENCODER: ComponentSpec(
            VAE_ENCODER,
            inputs=(TensorSpec("images", ("batch", 3, "image_height", "image_width"), "float32"),),
            outputs=(TensorSpec(LATENT_MEAN, latent, "float32"), TensorSpec(LATENT_STD, latent, "float32")),
        ),
        **{name: ComponentSpec(name, inputs=(
            TensorSpec("sample", latent, "float32"), TensorSpec("timestep", ("batch",), "float32"),
            TensorSpec(HIDDEN, unet_text, "float32"), *added_unet_inputs,
            TensorSpec(CONTROL_IMAGE, ("batch", 3, "image_height", "image_width"), "float32"),
            TensorSpec(CONDITIONING_SCALE, ("batch",), "float32"),
        ), outputs=control_residual_specs(dims)) for name in CONTROLNETS[:dims.controlnets]},
    }


# How many stacked rows one image adds to each component's batch axis.
BATCH_MULTIPLIER = {TEXT_ENCODER: TEXT_BRANCHES, UNET: MAX_BRANCHES, VAE_DECODER: 1, VAE_ENCODER: 1,
                    **dict.fromkeys(CONTROLNETS, MAX_BRANCHES)}


@dataclass(frozen=True)
class SizeRange:
    """Image sizes (pixels) an engine accepts along one side: ``low..high``, tuned for ``opt``."""

    low: int
    opt: int
    high: int

    @classmethod
    def fixed(cls, size: int) -> SizeRange:
        return cls(size, size, size)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


def component_profiles(
    dims: ModelDims, max_batch: int, height: SizeRange | int, width: SizeRange | int,
    max_prompt_chunks: int = DEFAULT_PROMPT_CHUNKS,
) -> dict[str, Profile]:
    """Optimization profiles per component: batch from 1 to multiplier x max_batch
    (opt at max_batch images); each spatial symbol over the built size range; the UNet's
    text axis from one chunk (opt) to ``max_prompt_chunks``."""
    h = height if isinstance(height, SizeRange) else SizeRange.fixed(height)
    w = width if isinstance(width, SizeRange) else SizeRange.fixed(width)
    low, opt, high = dims.bind(1, h.low, w.low), dims.bind(1, h.opt, w.opt), dims.bind(1, h.high, w.high)
    profiles: dict[str, Profile] = {}
    for name, spec in component_specs(dims).items():
        multiplier = BATCH_MULTIPLIER[name]
        profile: Profile = {}
        for symbol in spec.symbols:
            if symbol == "batch":
                profile[symbol] = (1, multiplier * max_batch, multiplier * max_batch)
            elif symbol == TEXT_LENGTH:
                length = dims.text_max_length
                profile[symbol] = (length, length, length * max_prompt_chunks)
            else:
                profile[symbol] = (low[symbol], opt[symbol], high[symbol])
        profiles[name] = profile
    return profiles


# Which `answer-trt build` flag widens each symbol of a profile.
BUILD_FLAG = {
    "batch": "--max-batch",
    "latent_height": "--height",
    "image_height": "--height",
    "latent_width": "--width",
    "image_width": "--width",
    TEXT_LENGTH: "--max-prompt-chunks",
}


def check_shapes(
    spec: ComponentSpec, profile: Profile, shapes: Mapping[str, tuple[int, ...]],
    rebuild_command: str = "answer-trt build ...",
) -> None:
    """Refuse input shapes outside ``profile`` before anything runs.

    Raises ``UserInputError`` naming the component, the symbol, the profile range and the
    build flag that would cover the request; ``rebuild_command`` is the command that
    rebuilt the folder as it is (``Manifest.build_command``), to change that flag in.
    """
    bound: dict[str, int] = {}
    for tensor in spec.inputs:
        shape = shapes.get(tensor.name)
        if shape is None:
            raise UserInputError(f"{spec.name}: missing input {tensor.name!r}")
        if len(shape) != len(tensor.shape):
            raise UserInputError(
                f"{spec.name}: input {tensor.name!r} has rank {len(shape)}, expected {len(tensor.shape)}")
        for axis, (want, got) in enumerate(zip(tensor.shape, shape)):
            if isinstance(want, int):
                if want != got:
                    raise UserInputError(
                        f"{spec.name}: input {tensor.name!r} axis {axis} is {got}, the model needs {want}")
                continue
            if bound.setdefault(want, got) != got:
                raise UserInputError(f"{spec.name}: {want} is {bound[want]} in one input and {got} in {tensor.name!r}")
            low, _, high = profile[want]
            if not low <= got <= high:
                raise UserInputError(
                    f"{spec.name}: {want}={got} is outside the built profile [{low}, {high}]; rebuild with "
                    f"`{rebuild_command}`, its {BUILD_FLAG.get(want, 'size flags')} widened to cover it"
                )


class ShapeCheck:
    """``check_shapes`` for an engine's calls, run once per new set of input shapes rather
    than at every step (a sampler repeats a few sets). Called with a call's feeds, it returns
    their shapes in ``spec.input_names`` order; raises ``UserInputError`` as ``check_shapes``."""

    def __init__(self, spec: ComponentSpec, profile: Profile, rebuild_command: str) -> None:
        self.spec, self.profile, self.rebuild_command = spec, profile, rebuild_command
        self._last: tuple[tuple[int, ...], ...] | None = None

    def __call__(self, feeds: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
        shapes = tuple(tuple(feeds[name].shape) for name in self.spec.input_names)
        if shapes != self._last:
            check_shapes(self.spec, self.profile, dict(zip(self.spec.input_names, shapes)), self.rebuild_command)
            self._last = shapes
        return shapes
