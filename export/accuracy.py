"""The post-build accuracy check (`answer-trt build --check`): each built component,
run through Polygraphy, against the torch module it was exported from.

The reference is the model's own component module (``answer_trt.backends.torch_modules``)
in float32 on the CPU, i.e. what ``--backend torch`` runs; the built artifact (ONNX graph
or TensorRT plan, in the staging folder) runs through Polygraphy's ONNX Runtime or
TensorRT runner. Both get the IO spec's seeded sample inputs
(``answer_trt.export.sample_inputs``) at batch 1 and the built profile's opt size, so the check
also covers a batch and a size other than the trace's. Polygraphy's comparator decides
element-wise: an element passes when its absolute error is within ``atol`` or its
relative error within ``rtol``.

Polygraphy is imported here only, lazily: importing the runtime never loads it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.iospec import COMPONENTS, ComponentSpec, Profile
from answer_trt.manifest import AccuracyCheck, AccuracyEntry, ComponentEntry

REFERENCE = "torch float32 (cpu)"
CHECK_BATCH = 1  # the trace ran at batch 2: batch 1 shows the batch axis stayed dynamic


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Per arithmetic precision and component. Measured with ONNX Runtime on the CPU (max abs
# error over every output element, batch 1 at the default size):
#   fp32: text_encoder 1.6e-6 / 9.5e-7, unet 9.1e-7 / 1.1e-6, vae_decoder 3.2e-6 / 2.1e-6
#         (`tiny-random` / `tiny`): atol 1e-4 leaves a margin of 30x;
#   fp16: unet 1.0e-3 / 1.3e-3, vae_decoder 2.3e-3 / 6.1e-4 (the text encoder stays fp32):
#         atol 5e-2 leaves 20x, room for full-size models' longer fp16 accumulations.
# The maximum relative errors (up to 0.016 in fp32 and 1.95 in fp16) come from reference
# values near zero; an element passes on either bound, so rtol only lets large values err
# more in absolute terms. bf16 (7 mantissa bits against fp16's 10): 8x the fp16 tolerances;
# measured with OpenVINO on the CPU (`tiny`, bf16 inference precision): unet 1.9e-2, vae_decoder
# 2.4e-2, a margin of 16x (TensorRT's bf16 is unmeasured).
# The VAE encoder (mean and log-variance out) takes the decoder's tolerances.
_BY_PRECISION = {"fp32": Tolerance(1e-4, 1e-3), "fp16": Tolerance(5e-2, 5e-2), "bf16": Tolerance(0.4, 0.4)}
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    precision: dict.fromkeys(COMPONENTS, tolerance) for precision, tolerance in _BY_PRECISION.items()}


def polygraphy_version() -> str:
    import polygraphy

    return str(polygraphy.__version__)


def arithmetic_precision(backend: str, precision: str, spec: ComponentSpec) -> str:
    """The precision a built component computes in: its graph's float dtype, on both
    backends (builds are strongly typed: an fp16 or bf16 build keeps the text encoder, and
    a force_upcast VAE, in fp32; answer_trt/precision.py). ``backend`` and ``precision`` are
    kept for the log."""
    dtypes = {t.dtype for t in (*spec.inputs, *spec.outputs)}
    return "bf16" if "bfloat16" in dtypes else "fp16" if "float16" in dtypes else "fp32"


def check_binding(profile: Profile) -> dict[str, int]:
    """Symbol values the check runs at: batch ``CHECK_BATCH``, every other axis at the profile's opt."""
    return {symbol: max(low, CHECK_BATCH) if symbol == "batch" else opt
            for symbol, (low, opt, _high) in profile.items()}


def artifact_runner(path: Path, backend: str) -> Any:
    """The Polygraphy runner of a built artifact: ONNX Runtime (the runtime's providers)
    for an ONNX graph, TensorRT for a plan. Nothing is loaded until the runner is activated."""
    if backend == "tensorrt":
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name=f"tensorrt:{path.name}")
    if backend == "onnxruntime":
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        from answer_trt.backends.ort import default_providers

        return OnnxrtRunner(SessionFromOnnx(str(path), providers=default_providers()), name=f"onnxruntime:{path.name}")
    raise ValueError(f"no accuracy-check runner for backend {backend!r}")


def engine_runner(make_engine: Any, spec: ComponentSpec, binding: Mapping[str, int], name: str) -> Any:
    """Polygraphy's PyTorch runner over one of our engines (``make_engine(profile)``, made on
    activation with ``binding`` as a fixed profile): feeds as torch tensors, outputs as float32."""
    import numpy as np
    import torch
    from polygraphy import util
    from polygraphy.backend.pyt import PytRunner
    from polygraphy.common import TensorMetadata

    class EngineRunner(PytRunner):
        @util.check_called_by("activate")
        def activate_impl(self) -> None:
            self.model = make_engine({symbol: (value, value, value) for symbol, value in binding.items()})

        @util.check_called_by("infer")
        def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
            feeds = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in feed_dict.items()}
            start = time.perf_counter()
            outputs = self.model.run(feeds)
            self.inference_time = time.perf_counter() - start
            return OrderedDict((key, outputs[key].float().cpu().numpy()) for key in spec.output_names)

    metadata = TensorMetadata()
    for tensor in spec.inputs:
        metadata.add(tensor.name, np.dtype(tensor.dtype), tensor.bind(binding))
    return EngineRunner(None, metadata, spec.output_names, name=name)


def package_runner(path: Path, spec: ComponentSpec, binding: Mapping[str, int], device: str) -> Any:
    """Polygraphy's runner over an AOTInductor package, run on the device it was compiled for
    (``InductorEngine``: inputs cast to the spec's dtypes)."""
    from answer_trt.backends.inductor import InductorEngine

    return engine_runner(lambda profile: InductorEngine(path, spec, profile, device), spec, binding,
                         f"inductor:{path.name}")


def openvino_runner(path: Path, spec: ComponentSpec, binding: Mapping[str, int], hint: str) -> Any:
    """Polygraphy's runner over an OpenVINO IR, compiled on activation with the inference
    precision ``hint`` the runtime gives it (``OpenVinoEngine``)."""
    from answer_trt.backends.openvino import OpenVinoEngine

    return engine_runner(lambda profile: OpenVinoEngine(path, spec, profile, hint), spec, binding,
                         f"openvino:{path.name}")


def reference_runner(module: Any, spec: ComponentSpec, binding: Mapping[str, int]) -> Any:
    """Polygraphy's PyTorch runner over the float32 reference module, run where the
    module lives (Polygraphy's own ``PytRunner.infer_impl`` moves inputs to CUDA)."""
    import numpy as np
    import torch
    from polygraphy import util
    from polygraphy.backend.pyt import PytRunner
    from polygraphy.common import TensorMetadata

    class ModuleRunner(PytRunner):
        @util.check_called_by("infer")
        def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
            device = next(self.model.parameters()).device
            with torch.no_grad():
                inputs = [torch.from_numpy(np.ascontiguousarray(feed_dict[name])).to(device) for name in input_names]
                start = time.perf_counter()
                outputs = self.model(*inputs)
                self.inference_time = time.perf_counter() - start
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            return OrderedDict((name, out.float().cpu().numpy()) for name, out in zip(self.output_names, outputs))

    input_names = spec.input_names
    metadata = TensorMetadata()
    for tensor in spec.inputs:
        metadata.add(tensor.name, np.dtype("int64" if tensor.dtype == "int64" else "float32"), tensor.bind(binding))
    # A loader, not the module: PytRunner calls whatever callable it is given (a module
    # included) to get the model.
    return ModuleRunner(lambda: module, metadata, spec.output_names, name=f"torch:{spec.name}")


def feed(spec: ComponentSpec, binding: Mapping[str, int]) -> OrderedDict[str, Any]:
    """The IO spec's seeded sample inputs at ``binding``, in the built graph's dtypes."""
    import torch

    from answer_trt.export.sample_inputs import sample_inputs

    dtype = torch.float16 if any(t.dtype == "float16" for t in spec.inputs) else torch.float32
    inputs = sample_inputs(spec, dict(binding), dtype)
    return OrderedDict((name, inputs[name].numpy()) for name in spec.input_names)


@dataclass(frozen=True)
class ComponentResult:
    name: str
    precision: str  # the arithmetic precision the tolerance is for
    tolerance: Tolerance
    max_abs_error: float
    max_rel_error: float
    passed: bool
    worst_output: str

    def describe(self) -> str:
        return (f"max abs error {self.max_abs_error:.3g} (atol {self.tolerance.atol:g}), max rel error "
                f"{self.max_rel_error:.3g} (rtol {self.tolerance.rtol:g})")


def compare_component(
    reference: Any, artifact: Any, spec: ComponentSpec, binding: Mapping[str, int], precision: str,
    tolerance: Tolerance,
) -> ComponentResult:
    """Run both runners on the sample inputs and compare every output with Polygraphy."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):  # its own log is long; we report one line
            results = Comparator.run([reference, artifact], data_loader=[feed(spec, binding)])
            accuracy = Comparator.compare_accuracy(
                results, compare_func=CompareFunc.simple(atol=tolerance.atol, rtol=tolerance.rtol))
    except PolygraphyException as exc:
        message = " ".join(str(exc).split())[:300]
        raise UserInputError(f"the accuracy check could not run {spec.name} ({message}); build with --no-check to "
                             "skip it") from None
    passed = bool(accuracy)
    outputs = [(name, result) for pair in accuracy[0].values() for iteration in pair
               for name, result in iteration.items()]
    if not outputs:
        raise UserInputError(f"the accuracy check found no common outputs of {spec.name} to compare; build with "
                             "--no-check to skip it")
    # A shape mismatch is a bare False with no statistics; a NaN error sorts as the worst.
    errors = [(name, _error(result, "max_absdiff"), _error(result, "max_reldiff")) for name, result in outputs]
    worst = max(errors, key=lambda e: e[1])
    return ComponentResult(spec.name, precision, tolerance, max_abs_error=worst[1],
                           max_rel_error=max(e[2] for e in errors), passed=passed, worst_output=worst[0])


def _error(result: Any, stat: str) -> float:
    value = float(getattr(result, stat, math.inf))
    return math.inf if math.isnan(value) else value


def check_components(
    folder: Path, components: Mapping[str, ComponentEntry], modules: Mapping[str, Any], backend: str,
    precision: str, log: Callable[[str], None], device: str = "cpu", force_upcast: bool = False,
) -> AccuracyCheck:
    """Check every built component in ``folder`` (the staging folder) against its float32
    reference module; log one line per component. ``force_upcast``: the VAE's (an OpenVINO
    bf16 build compiles it in f32 then, by the precision rule). Raises ``UserInputError`` (one line,
    naming each failing component and its errors) when any exceeds its tolerance."""
    results = []
    for name, entry in components.items():
        spec, binding = entry.spec, check_binding(entry.profile)
        arith = arithmetic_precision(backend, precision, spec)
        if backend == "openvino":  # float32 graphs, compiled in the precision rule's dtype
            from answer_trt.backends.openvino import inference_precision

            hint = inference_precision(name, precision, force_upcast)
            arith = "bf16" if hint == "bf16" else "fp32"
            artifact = openvino_runner(folder / entry.file, spec, binding, hint)
        elif backend == "inductor":
            artifact = package_runner(folder / entry.file, spec, binding, device)
        else:
            artifact = artifact_runner(folder / entry.file, backend)
        tolerance = TOLERANCES[arith][name]
        result = compare_component(reference_runner(modules[name], spec, binding), artifact, spec, binding, arith,
                                   tolerance)
        log(f"accuracy check {name} ({arith}) vs {REFERENCE}: {result.describe()}: "
            f"{'pass' if result.passed else 'FAIL'}")
        results.append(result)
    failed = [r for r in results if not r.passed]
    if failed:
        raise UserInputError(
            "accuracy check failed: " + "; ".join(f"{r.name} ({r.precision}, output {r.worst_output}) differs from "
                                                  f"the {REFERENCE} reference: {r.describe()}" for r in failed)
            + "; nothing was published (build with --no-check to skip the check)")
    return AccuracyCheck(
        tool=f"polygraphy {polygraphy_version()}",
        reference=REFERENCE,
        components={r.name: AccuracyEntry(r.precision, r.tolerance.atol, r.tolerance.rtol, r.max_abs_error,
                                          r.max_rel_error) for r in results},
    )
