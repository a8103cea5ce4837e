"""What a build or a request may ask for, in one place: backend names, precisions,
devices, and the integer and image-size rules with the checks that enforce them.

The CLI, the loaders, the manifest and the export stage import these instead of
repeating them. Every check raises ``UserInputError`` with a message that says what
to change; the CLI's argument parsers wrap the same checks.

Resources are sized before any work starts (``check_memory``): a request for ``batch``
images of H x W pixels is estimated, as an upper bound linear in the pixel count, at

    bytes = batch * H * W * (LATENT_COPIES * C_lat * 4 / f**2          latents, fp32 sampler state
                             + MAX_BRANCHES * UNET_TENSORS * UNET_WIDTH * e / f**2   UNet activations
                             + VAE_TENSORS * VAE_WIDTH * e                  VAE decoder activations
                             + IMAGE_BYTES_PER_PIXEL)                       decoded images

with C_lat the latent channels, f the VAE's downsampling factor, and e the bytes per
value of the precision (4 for fp32, 2 for fp16 and bf16). The widths are the SD
family's (SD 1.x, 2.x and XL all start their UNet at 320 channels and decode at 128),
so models narrower than that, the built-in tiny ones included, are overestimated.
Attention score matrices (quadratic in the latent pixels) are not counted: fused
attention (TensorRT, PyTorch's SDPA) never materializes them. The limit is
``$ANSWER_TRT_MAX_MEMORY_GB`` where set, else this machine's physical memory.
"""

from __future__ import annotations

import math
import os
import re

from answer_trt.errors import UserInputError
from answer_trt.iospec import MAX_BRANCHES, ModelDims, SizeRange

# What `answer-trt build` makes: the backend of an engines folder (and its manifest).
# inductor: AOTInductor packages (`.pt2`), compiled for the CPU or a CUDA GPU (`--device`).
# openvino: OpenVINO IR (`.xml` + `.bin`) converted from the ONNX graphs, compiled for the CPU at load.
BUILD_BACKENDS = ("onnxruntime", "tensorrt", "inductor", "openvino")
# How `load()` / `generate --model` runs a MODEL: ONNX Runtime or OpenVINO engines built into
# the cache, or eager PyTorch (the reference).
LOAD_BACKENDS = ("onnxruntime", "openvino", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")
# Without --precision: fp32 on ONNX Runtime (CPU), fp16 on TensorRT; inductor: fp32 on the
# CPU, fp16 on CUDA (``default_precision``).
# openvino: fp32 here, bf16 where the CPU has native bf16 (``default_precision``): bf16 passed the
# quality gate of issue 35 (pooled "correct" within 0.4 points of fp32 on both trained models,
# every interval within 1.3) and is 2.1-2.6x faster per full-size UNet call (benchmarks/README.md).
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16", "inductor": "fp32", "openvino": "fp32"}
# bf16 builds need TensorRT, inductor or OpenVINO (on a CPU with native bf16): ONNX Runtime's
# CPU provider has no bf16 kernels.
BF16_BACKENDS = ("tensorrt", "inductor", "openvino")
DEVICES = ("cpu", "cuda")
DEFAULT_MAX_BATCH = 4
# Every image side is a multiple of this before a model is known (the VAE's 8x
# downsampling of SD models); once it is, of the model's own ``ModelDims.size_multiple``
# (VAE factor x the UNet's 2**down-sampling stages: 64 for SD 1.x, 2.x and XL).
SIZE_MULTIPLE = 8
# The largest image side anything accepts (build, generate, API): 4096 px is 4x SD XL's
# native 1024 and 8x SD 1.x's 512; beyond it the VAE decoder alone needs tens of GB.
MAX_IMAGE_SIDE = 4096
# torch.Generator.manual_seed takes 0 .. 2**64 - 1 (and wraps negatives modulo 2**64,
# so -1 would silently be 2**64 - 1: negative seeds are refused instead).
MAX_SEED = 2**64 - 1

# The memory estimate (see the module docstring) and its limit.
MEMORY_ENV = "ANSWER_TRT_MAX_MEMORY_GB"
FALLBACK_MEMORY_BYTES = 16 * 10**9  # where the machine's memory cannot be read
GB = 10**9
LATENT_COPIES = 16  # noise, state, the branches' predictions, scheduler history, chain state
UNET_TENSORS = 24  # live full-latent-resolution tensors per UNet call: skips, block temporaries, feed-forward
UNET_WIDTH = 320
VAE_TENSORS = 8  # live full-image-resolution tensors in the decoder's last up block
VAE_WIDTH = 128
IMAGE_BYTES_PER_PIXEL = 3 * (4 + 4 + 1 + 1)  # decoded fp32, a float copy, uint8 pixels, the PIL image
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


# A weights variant's name as diffusers and transformers write it into file names
# (`unet/diffusion_pytorch_model.fp16.safetensors`): no dots (they split on them), no path
# separators. `fp16`, `bf16`, `ema`, `non_ema`, `fp16-ema`.
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_precision(backend: str, device: str = "cpu", native_bf16: bool = False) -> str:
    """The precision a build of ``backend`` for ``device`` gets without ``--precision``;
    ``native_bf16``: whether this CPU runs bf16 natively (OpenVINO's ``BF16`` capability), which
    makes bf16 the openvino default."""
    if backend == "inductor" and device == "cuda":
        return "fp16"
    if backend == "openvino" and native_bf16:
        return "bf16"
    return DEFAULT_PRECISION[backend]


def check_variant(variant: object) -> str:
    """``variant`` if it is a name the libraries put in a weights file name, else a
    ``UserInputError`` that says what a variant looks like."""
    if not isinstance(variant, str) or not VARIANT_NAME.fullmatch(variant):
        raise UserInputError(f"--variant {variant!r} is not a weights variant name: use the name in the files, "
                             "e.g. --variant fp16 for unet/diffusion_pytorch_model.fp16.safetensors")
    return variant


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; ``name`` is the flag or argument."""
    if not isinstance(value, str) or value not in choices:
        raise UserInputError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_int(name: str, value: object, low: int = 1) -> int:
    """An integer (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_size(name: str, value: object, multiple: int = SIZE_MULTIPLE) -> int:
    """An image side in pixels: a positive integer multiple of ``multiple`` (a model's
    ``ModelDims.size_multiple`` where the model is known), at most ``MAX_IMAGE_SIDE``.
    A positive size off the multiple is refused naming both neighbours ("pick 64 or 80")."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_IMAGE_SIDE:
        raise UserInputError(f"{name} {value} is above the limit of {MAX_IMAGE_SIDE} px per image side: "
                             f"pick {MAX_IMAGE_SIDE} or less")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        hint = f": pick {size_neighbours(value, multiple)}" if isinstance(value, int) and value > 0 else ""
        why = " (this model's size multiple: VAE factor x UNet down-sampling)" if multiple > SIZE_MULTIPLE else ""
        raise UserInputError(f"{name} {value!r} is not a positive multiple of {multiple}{why}{hint}")
    return value


def size_neighbours(value: int, multiple: int) -> str:
    """The multiples of ``multiple`` on either side of ``value`` ("64 or 80"), within
    ``multiple`` .. ``MAX_IMAGE_SIDE``."""
    below, above = value - value % multiple, value - value % multiple + multiple
    options = [n for n in (below, above) if multiple <= n <= MAX_IMAGE_SIDE]
    return " or ".join(str(n) for n in options)


def check_size_range(name: str, value: SizeRange, multiple: int = SIZE_MULTIPLE) -> SizeRange:
    """Both ends of a range checked as sizes, low end not above the high end."""
    for end in (value.low, value.high):
        check_size(name, end, multiple)
    if value.low > value.high:
        raise UserInputError(f"{name} {value.low}:{value.high}: the low end is above the high end")
    return value


def parse_int(text: str, name: str = "value") -> int:
    try:
        return int(text)
    except ValueError:
        raise UserInputError(f"{name} {text!r} is not an integer") from None


def parse_size_range(text: str, name: str = "size") -> SizeRange:
    """``512`` or ``512:768`` (a build-time range); opt is the low end until the build
    resolves it against the model's default size."""
    low, _, high = text.partition(":")
    low_value = parse_int(low, name)
    high_value = parse_int(high, name) if high else low_value
    return check_size_range(name, SizeRange(low_value, low_value, high_value))


def check_seed(value: object) -> int:
    """A seed torch's generator takes as it is: an integer in 0 .. 2**64 - 1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UserInputError(f"seed must be an integer from 0 to 2**64 - 1 ({MAX_SEED}), got {value!r}")
    return value


def bytes_per_image(dims: ModelDims, height: int, width: int, precision: str) -> int:
    """The estimate of the module docstring for one image of ``height`` x ``width`` px."""
    e = PRECISION_BYTES.get(precision, 4)  # unknown: count as fp32, the widest
    pixels = height * width
    latent_pixels = (height // dims.vae_scale_factor) * (width // dims.vae_scale_factor)
    latents = LATENT_COPIES * dims.latent_channels * latent_pixels * 4
    unet = MAX_BRANCHES * UNET_TENSORS * UNET_WIDTH * latent_pixels * e
    vae = VAE_TENSORS * VAE_WIDTH * pixels * e
    return latents + unet + vae + IMAGE_BYTES_PER_PIXEL * pixels


def memory_limit() -> tuple[int, str]:
    """The most bytes a request may need, and where that figure comes from."""
    text = os.environ.get(MEMORY_ENV)
    if text is not None and text.strip():
        try:
            gb = float(text)
        except ValueError:
            gb = math.nan
        if not math.isfinite(gb) or gb <= 0:
            raise UserInputError(f"{MEMORY_ENV}={text!r} is not a positive number of GB: set it to e.g. 16, "
                                 "or unset it to use this machine's memory")
        return int(gb * GB), f"{MEMORY_ENV}={text.strip()}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = -1
    if total <= 0:
        return FALLBACK_MEMORY_BYTES, f"a default, as this machine's memory is unknown; set {MEMORY_ENV} to change it"
    return total, f"this machine's memory; set {MEMORY_ENV} to change it"


def _gb(count: int) -> str:
    gb = count / GB
    return f"{gb:,.0f} GB" if gb >= 100 else f"{gb:.3g} GB"


def check_memory(dims: ModelDims, batch: int, height: int, width: int, precision: str, *,
                 batch_flag: str = "--batch", size_label: str = "") -> int:
    """Refuse ``batch`` images of ``height`` x ``width`` px when the estimate of the module
    docstring exceeds ``memory_limit()``; returns the estimate in bytes. ``batch_flag``
    names the flag to lower in the hint (``--max-batch`` for a build); ``size_label``
    (e.g. ``"the default size, "``) says where the size came from when the user did not
    give it."""
    per_image = bytes_per_image(dims, height, width, precision)
    need = batch * per_image
    limit, source = memory_limit()
    if need <= limit:
        return need
    what = f"{batch_flag} {batch} at {width}x{height} px ({size_label}{precision})"
    fits = limit // per_image
    if fits >= 1:
        hint = f"use {batch_flag} {fits} or fewer, or a smaller --height/--width"
    else:
        hint = f"even one image of that size needs {_gb(per_image)}: use a smaller --height/--width"
    raise UserInputError(f"{what} needs about {_gb(need)} by answer-trt's estimate, above the limit of {_gb(limit)} "
                         f"({source}): {hint}")
