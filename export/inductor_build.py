"""Torch module -> AOTInductor package (``<component>.pt2``): ``torch.export`` with the IO
spec's dynamic axes over the built profile, then ``torch._inductor.aoti_compile_and_package``
for the build's device (CPU or CUDA).

The package is what a TensorRT plan is to the TensorRT backend: compiled once by
``answer-trt build --backend inductor``, loaded without compiling by
``answer_trt.backends.inductor`` (``aoti_load_package``), valid only for the torch version
and device (and GPU) it was compiled with, which are in the build key and the manifest.

Dynamic axes follow the profile (``answer_trt.iospec.component_profiles``): ``batch`` from 1
to its max; a spatial axis is dynamic only where the profile's range is (a fixed-size build
compiles static spatial shapes, which Inductor specializes better), in steps of the UNet's
up factor (its skip connections need multiples of it). The trace runs at batch 2, so
``torch.export`` cannot specialize the batch axis to 1 (its 0/1 rule), and the range it
records still starts at 1: the one-row call of a guidance-off step runs on the same package.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from answer_trt.errors import UserInputError
from answer_trt.export.sample_inputs import sample_inputs
from answer_trt.iospec import TEXT_LENGTH, ComponentSpec, ModelDims, Profile

TRACE_BATCH = 2
# The symbols of the IO spec that follow the image size; each is a multiple of its step.
SPATIAL = ("latent_height", "latent_width", "image_height", "image_width")


def check_can_compile(device: str) -> None:
    """Refuse, before a model is loaded, a build this machine cannot compile: AOTInductor
    needs a C++ compiler (``$CXX``, else g++ or clang++) and, for ``device`` cuda, a GPU
    torch can see."""
    import os

    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    if not any(shutil.which(name) for name in candidates):
        raise UserInputError(f"--backend inductor compiles C++ and found no compiler ({' or '.join(candidates)}): "
                             "install one (`apt-get install g++`) or set CXX, or build with --backend onnxruntime")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda compiles for a CUDA GPU, and torch sees none here: build on the machine "
                             "that will run the engines, or use --device cpu")


def dim_step(symbol: str, dims: ModelDims) -> int:
    """The multiple every value of a spatial ``symbol`` is: the UNet's up factor for a latent
    side, that times the VAE factor for an image side (``ModelDims.size_multiple``); the text
    encoder's length for the UNet's text axis (whole chunks)."""
    if symbol == TEXT_LENGTH:
        return dims.text_max_length
    step = max(dims.unet_overall_up_factor, 1)
    return step * dims.vae_scale_factor if symbol.startswith("image_") else step


def dynamic_shapes(spec: ComponentSpec, profile: Profile, dims: ModelDims) -> dict[str, dict[int, Any]]:
    """``torch.export``'s ``dynamic_shapes`` for ``spec``'s inputs, keyed by input name: one
    ``Dim`` per symbol (shared across inputs), ``batch`` over ``profile``'s range, a spatial
    symbol as ``step * Dim`` where its range is not a single size; fixed axes are left out."""
    from torch.export import Dim

    made: dict[str, Any] = {}

    def dim(symbol: str) -> Any:
        if symbol not in made:
            low, _opt, high = profile[symbol]
            if symbol in SPATIAL or symbol == TEXT_LENGTH:
                step = dim_step(symbol, dims)
                made[symbol] = step * Dim(f"{symbol}_units", min=max(low // step, 1), max=high // step)
            else:
                made[symbol] = Dim(symbol, min=low, max=high)
        return made[symbol]

    shapes: dict[str, dict[int, Any]] = {}
    for tensor in spec.inputs:
        axes = {}
        for axis, size in enumerate(tensor.shape):
            if isinstance(size, str) and _is_dynamic(profile[size]):
                axes[axis] = dim(size)
        shapes[tensor.name] = axes
    return shapes


def _is_dynamic(bounds: tuple[int, int, int]) -> bool:
    return bounds[0] != bounds[2]


def trace_binding(spec: ComponentSpec, profile: Profile) -> dict[str, int]:
    """Symbol values of the trace inputs: batch ``TRACE_BATCH`` (within the profile), the
    text axis at two chunks where the profile takes them, every other symbol at the profile's opt."""
    binding = {}
    for symbol, (low, opt, high) in profile.items():
        if symbol == "batch":
            binding[symbol] = min(max(TRACE_BATCH, low), high)
        elif symbol == TEXT_LENGTH:
            binding[symbol] = min(2 * low, high)
        else:
            binding[symbol] = opt
    return binding


def export_program(module: nn.Module, spec: ComponentSpec, profile: Profile, dims: ModelDims,
                   device: str) -> Any:
    """``torch.export.export`` of ``module`` (already in its dtype, moved to ``device`` here)
    on the spec's sample inputs, with ``dynamic_shapes``. Raises ``UserInputError`` when the
    model cannot be exported with these axes (the message names the component)."""
    half = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    float_dtype = next((half[t.dtype] for t in spec.inputs if t.dtype in half), torch.float32)
    module = module.to(device).eval()
    inputs = sample_inputs(spec, trace_binding(spec, profile), float_dtype, device)
    args = tuple(inputs[name] for name in spec.input_names)
    shapes = dynamic_shapes(spec, profile, dims)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args, dynamic_shapes=tuple(shapes[n] for n in spec.input_names),
                                       strict=False)
    except Exception as exc:  # torch.export's errors are long; the first line says what failed
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"torch.export could not export {spec.name} with dynamic axes "
                             f"{', '.join(spec.symbols)} ({type(exc).__name__}: {first}); build this model with "
                             "--backend onnxruntime, or with a fixed --height/--width") from None


def compile_package(module: nn.Module, spec: ComponentSpec, profile: Profile, dims: ModelDims, device: str,
                    path: Path, log: Callable[[str], None] = lambda _m: None) -> Path:
    """Export ``module`` and compile it with AOTInductor into the package ``path``
    (``<component>.pt2``); returns ``path``. ``log`` gets the seconds of each phase (export,
    compile): where a build's time goes (the CUDA compile of a full-size UNet is minutes)."""
    import time

    from torch._inductor import aoti_compile_and_package

    started = time.perf_counter()
    program = export_program(module, spec, profile, dims, device)
    log(f"{spec.name}: torch.export took {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-aoti-", dir=path.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = aoti_compile_and_package(program, package_path=str(work / path.name))
        Path(built).replace(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{spec.name}: AOTInductor compile took {time.perf_counter() - started:.1f} s")
    return path
