"""OpenVINO backend: the OpenVINO IR (``<component>.xml`` + ``<component>.bin``) of
``answer-trt build --backend openvino`` behind the Engine interface, compiled for the CPU.

The IR is the exported ONNX graph read by OpenVINO's ONNX frontend and saved (float32 weights,
``answer_trt.export.openvino_build``). The precision is chosen when the model is compiled,
not in the graph: ``INFERENCE_PRECISION_HINT`` is ``bf16`` for the components the
precision rule runs in a half type (``answer_trt.precision.component_dtype``: the UNet and
the VAE decoder of a bf16 build) and ``f32`` for every other, asked for explicitly because
OpenVINO's own default on a CPU with native bf16 is bf16. bf16 is refused in one line on
a CPU without it (``check_precision_here``). Threads: ``INFERENCE_NUM_THREADS`` from the
build's measurement where the manifest records one for a machine like this (``0``: OpenVINO's
own choice). Shapes: the IR keeps the ONNX graph's dynamic axes; where the build measured a
static-shape model faster (the manifest's ``SessionChoice.static_shapes``), each component
compiles a static copy per set of call shapes on first use instead. Shapes outside the built
profile are refused before anything runs (``check_shapes``).

``openvino`` is imported lazily: a machine without it imports this module, and gets one line
saying what to install when it builds or loads OpenVINO engines (``require_openvino``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from answer_trt.errors import UserInputError
from answer_trt.iospec import ComponentSpec, Profile, ShapeCheck
from answer_trt.precision import component_dtype

INSTALL_HINT = "pip install 'answer-trt[openvino]' (or pip install openvino)"
DEVICE = "CPU"
# OpenVINO's inference precision names for the spec's float dtypes.
HINTS = {"float32": "f32", "bfloat16": "bf16"}
# Static-shape models one engine compiles at most (each may hold its own copy of the weights:
# GBs for a full-size UNet): the sampler's 1, 2 and 3 rows per image at one batch size; any
# further shape set (a server's mixed batches, a size range) runs on the dynamic model.
MAX_STATIC = 3
# OpenVINO's element type names for the IO spec's dtypes (``Type.get_type_name()``).
OV_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32"}


def require_openvino() -> Any:
    """The ``openvino`` module, or a ``UserInputError`` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UserInputError(f"the openvino backend needs OpenVINO, which is not installed: {INSTALL_HINT}; or "
                             "build with --backend onnxruntime") from None
    return openvino


def openvino_version() -> str:
    """OpenVINO's version (``2026.4.1``), for the build key and the manifest."""
    return str(require_openvino().__version__).split("-")[0]


@cache
def core() -> Any:
    """One ``openvino.Core`` per process."""
    return require_openvino().Core()


def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (``('BF16', 'FP32', 'INT8', ...)``)."""
    return tuple(str(c) for c in core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def has_native_bf16() -> bool:
    """Whether OpenVINO reports native bf16 (``BF16``: AVX512-BF16 or AMX) on this CPU, which makes
    bf16 the default precision of an openvino build (``rules.default_precision``); a
    ``UserInputError`` naming the install when OpenVINO is missing."""
    return "BF16" in cpu_capabilities()


def check_precision_here(precision: str, what: str = "--precision bf16",
                         remedy: str = "use --precision fp32") -> None:
    """Refuse, in one line, a precision this CPU cannot run natively: bf16 needs a CPU that
    OpenVINO reports ``BF16`` for (AVX512-BF16 or AMX); fp16 is not offered. ``what`` names
    what asked for it, ``remedy`` what to do instead."""
    if precision == "fp16":
        raise UserInputError("--backend openvino runs fp32 or bf16 on the CPU: use --precision fp32 or bf16")
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise UserInputError(f"{what} needs a CPU with native bf16 (AVX512-BF16 or AMX), and OpenVINO reports none "
                             f"here: {remedy}")


def inference_precision(component: str, precision: str, force_upcast: bool) -> str:
    """The ``INFERENCE_PRECISION_HINT`` (``f32`` or ``bf16``) ``component`` is compiled with
    in a build of ``precision``: the precision rule's dtype (``answer_trt.precision``)."""
    dtype = component_dtype(component, precision, force_upcast)
    if dtype not in HINTS:
        raise UserInputError(f"--backend openvino runs fp32 or bf16, not {precision}: use --precision fp32 or bf16")
    return HINTS[dtype]


def compile_config(hint: str, threads: int) -> dict[str, str]:
    """The CPU plugin's compile properties: the inference precision (always explicit), latency
    mode, and the thread count where one was chosen (``0``: OpenVINO's own)."""
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def check_model_matches_spec(model: Any, spec: ComponentSpec, path: Path, rebuild_command: str) -> None:
    """Refuse an IR whose inputs or outputs (names, element types, ranks) are not the spec's.
    (A port may carry several names, an output its producer's too: the spec's must be one.)"""

    def signatures(ports: Any) -> dict[str, tuple[str, int]]:
        return {name: (OV_TYPES.get(port.get_element_type().get_type_name(), "?"), len(port.get_partial_shape()))
                for port in ports for name in port.get_names()}

    differ = ", ".join(
        t.name for tensors, ports in ((spec.inputs, model.inputs), (spec.outputs, model.outputs))
        for t in tensors if signatures(ports).get(t.name) != (t.dtype, len(t.shape)))
    if differ or len(model.inputs) != len(spec.inputs) or len(model.outputs) != len(spec.outputs):
        raise UserInputError(f"{path}: the model's tensors do not match the manifest's spec "
                             f"({differ or 'their count'}): rebuild the engines folder with `{rebuild_command}`")


class OpenVinoEngine:
    """Runs one component's IR compiled for the CPU; refuses shapes outside its built profile
    before running. ``hint``: ``f32`` or ``bf16``; ``threads``: ``INFERENCE_NUM_THREADS`` (0:
    OpenVINO's choice); ``static``: compile a static-shape copy of the model for each new set of
    input shapes, on its first call (the sampler uses a few: 1, 2 or 3 rows per image), instead
    of one dynamic-shape model, up to ``MAX_STATIC`` of them (later shape sets run on the
    dynamic model, compiled when first needed). ``rebuild_command`` is what its errors say to run."""

    def __init__(self, path: Path, spec: ComponentSpec, profile: Profile, hint: str = "f32", threads: int = 0,
                 rebuild_command: str = "answer-trt build ... --force", static: bool = False) -> None:
        self.spec = spec
        self.profile = profile
        self.hint = hint
        self.threads = threads
        self.static = static
        self.rebuild_command = rebuild_command
        if hint == "bf16":
            check_precision_here("bf16", f"{path.name} (built for bf16)", f"rebuild with `{rebuild_command}` and "
                                 "--precision fp32")
        try:
            model = core().read_model(str(path))
        except RuntimeError as exc:  # checksums passed: not an IR of ours
            raise UserInputError(f"{path} could not be read as an OpenVINO model ({' '.join(str(exc).split())[:200]}"
                                 f"); rebuild with `{rebuild_command}`") from None
        check_model_matches_spec(model, spec, path, rebuild_command)
        self.model = model
        # Per set of input shapes (static) or one for all (key None): the compiled model and its request.
        self._compiled: dict[tuple[tuple[int, ...], ...] | None, tuple[Any, Any]] = {}
        if not static:
            self._compile(None)
        self._dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._check_shapes = ShapeCheck(spec, profile, rebuild_command)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shapes = self._check_shapes(feeds)
        arrays = {name: np.ascontiguousarray(feeds[name].detach().cpu().numpy(), dtype=self._dtypes[name])
                  for name in self.spec.input_names}
        with self._lock:  # one infer request per compiled model: calls one at a time
            key = shapes if self.static and (shapes in self._compiled or self._static_count() < MAX_STATIC) else None
            compiled, request = self._compiled.get(key) or self._compile(key)
            # share_inputs: the request reads the arrays in place (no copy in); its results are
            # already copies of its reused output buffers (share_outputs=False), owned by us.
            results = request.infer(arrays, share_inputs=True, share_outputs=False)
            outputs = [results[port] for port in compiled.outputs]
        return {name: torch.from_numpy(out) for name, out in zip(self.spec.output_names, outputs)}


    def _static_count(self) -> int:
        return sum(key is not None for key in self._compiled)

    def _compile(self, shapes: tuple[tuple[int, ...], ...] | None) -> tuple[Any, Any]:
        """Compile the model (a static copy reshaped to ``shapes``, in the spec's input order;
        None: as read, dynamic) and keep it with its infer request."""
        model = self.model
        if shapes is not None:
            model = model.clone()
            model.reshape({name: list(shape) for name, shape in zip(self.spec.input_names, shapes)})
        compiled = core().compile_model(model, DEVICE, compile_config(self.hint, self.threads))
        self._compiled[shapes] = (compiled, compiled.create_infer_request())
        return self._compiled[shapes]


def load_engines(folder: Path, components: Mapping[str, tuple[str, ComponentSpec, Profile]], precision: str,
                 force_upcast: bool, threads: int, rebuild_command: str,
                 static: bool = False) -> dict[str, OpenVinoEngine]:
    """One ``OpenVinoEngine`` per component (``name -> (file, spec, profile)``), each compiled with
    its precision rule's hint (``inference_precision``) after ``check_precision_here``; ``static``:
    the shape policy the build measured (``OpenVinoEngine``)."""
    require_openvino()
    for name, (file, _spec, _profile) in components.items():  # an IR reads only its own .bin beside it
        if not file.endswith(".xml"):
            raise UserInputError(f"{folder}: component {name} is {file!r}, not an OpenVINO IR (.xml): rebuild with "
                                 f"`{rebuild_command}`")
    check_precision_here(precision, f"{folder} (built with --precision {precision})",
                         f"rebuild it here with `{rebuild_command.replace('--precision bf16', '--precision fp32')}`")
    return {name: OpenVinoEngine(folder / file, spec, profile, inference_precision(name, precision, force_upcast),
                                 threads, rebuild_command, static)
            for name, (file, spec, profile) in components.items()}
