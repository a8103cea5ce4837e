"""ONNX -> TensorRT plan, one per component, with the optimization profile of the IO
spec and a persistent timing cache.

Strongly typed builds: the network is created with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` and no precision builder flag is set, so
each layer runs in the type its ONNX graph gives it (fp16 / bf16 graphs come from the
export, ``answer_trt.precision.component_dtype``). TensorRT 11 removed every weak-typing API
(``BuilderFlag.FP16`` / ``BF16`` / ``INT8`` / ``FP8``, ``OBEY_`` / ``PREFER_PRECISION_CONSTRAINTS``,
calibrators) and builds every network strongly typed; on 10.x the flag opts in (weak typing
is deprecated since 10.12). NVIDIA, "Migrating from TensorRT 10.x to 11.x": "Strongly Typed
Networks Are Now Required"; TensorRT 10.12.0 and 11.0.0 release notes. On 11.x the flag itself
is deprecated and ignored (``NetworkDefinitionCreationFlag::kSTRONGLY_TYPED`` in NvInfer.h of
TensorRT 11: "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled"), so 11.x
networks are created with no flag (``strongly_typed_flags``).

Every other call here is in the TensorRT 11 Python bindings unchanged (read in NVIDIA/TensorRT's
11.1 source, ``python/src/infer/pyCore.cpp``, ``pyGraph.cpp`` and ``python/src/parsers/pyOnnx.cpp``,
and against the 11.4 "Removed Python APIs and Replacements" list): ``ILogger``, ``Builder.create_network``,
``OnnxParser.parse_from_file``, ``set_memory_pool_limit(WORKSPACE, ...)``, optimization profiles,
``create_timing_cache`` / ``set_timing_cache(cache, ignore_mismatch)``, ``build_serialized_network``.

Supported: TensorRT 10.12 or newer, 11.x (``answer_trt.backends.bindings.check_tensorrt_version``).
Written against the TensorRT 10/11 Python API and type-checked with ``tensorrt-stubs`` 10.13
(no 11.x stubs exist); no machine of ours can run TensorRT, so this module has not been
executed. ``tests/test_tensorrt_api.py`` runs it against a fake ``tensorrt`` and keeps the
removed names out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tensorrt as trt

from answer_trt.backends.bindings import check_tensorrt_version, tensorrt_major_minor
from answer_trt.export.profiles import profile_shapes
from answer_trt.files import atomic_path
from answer_trt.iospec import ComponentSpec, Profile
from answer_trt.versions import torch_cuda_version

WORKSPACE_BYTES = 8 * 2**30


class _Logger(trt.ILogger):
    """Forwards TensorRT's warnings and errors to our log function."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        trt.ILogger.__init__(self)
        self._emit = emit

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity <= trt.ILogger.Severity.WARNING:
            self._emit(f"TensorRT: {msg}")


def build_plan(
    onnx_path: Path,
    spec: ComponentSpec,
    profile: Profile,
    precision: str,
    plan_path: Path,
    timing_cache_path: Path,
    log: Callable[[str], None] = print,
) -> None:
    """Parse ``onnx_path`` (external data beside it is found by path), build, and write the
    serialized engine to ``plan_path`` atomically; the timing cache is read and updated.

    The build is strongly typed: ``precision`` selects nothing here (the graph's types do);
    the graph's input types are checked against ``spec`` so that a graph exported in the
    wrong precision is refused instead of silently built in it."""
    check_tensorrt_version(trt.__version__, torch_cuda_version())
    logger = _Logger(log)
    builder = trt.Builder(logger)
    # 10.x: opts into strong typing; 11.x: always strongly typed, no flag (see strongly_typed_flags).
    network = builder.create_network(strongly_typed_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    check_graph_types(network, spec, precision)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # No precision builder flag: removed in 11.x (BuilderFlag.FP16/BF16 -> "strong typing",
    # Removed Python APIs and Replacements); on 10.x they would be ignored or refused by a
    # strongly typed network.

    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(spec, profile).items():
        optimization_profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(optimization_profile)

    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {spec.name}; see the TensorRT messages above")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    with atomic_path(timing_cache_path) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))


def strongly_typed_flags() -> int:
    """The ``create_network`` flags of every build, strongly typed: on 10.x the STRONGLY_TYPED
    bit (an opt-in there); on 11.x none, since every network is strongly typed and the flag is
    deprecated and ignored (its value moved from bit 1 to bit 0 when EXPLICIT_BATCH went)."""
    found = tensorrt_major_minor(trt.__version__)
    if found is not None and found >= (11, 0):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def trt_dtypes() -> dict[str, trt.DataType]:
    """Spec dtype names -> TensorRT's."""
    return {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF, "bfloat16": trt.DataType.BF16,
            "int64": trt.DataType.INT64, "int32": trt.DataType.INT32}


def check_graph_types(network: trt.INetworkDefinition, spec: ComponentSpec, precision: str) -> None:
    """Refuse a parsed graph whose input or output types differ from the IO spec: with strong
    typing the graph's types are the engine's precision, so a mismatch means the ONNX file was
    exported for another precision."""
    expected = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    dtypes = trt_dtypes()
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    for tensor in tensors:
        want = expected.get(tensor.name)
        if want is None:
            continue
        if tensor.dtype != dtypes[want]:
            raise RuntimeError(
                f"{spec.name}: the ONNX graph's {tensor.name} is {tensor.dtype}, the {precision} IO spec says {want}; "
                "TensorRT builds strongly typed, so the graph must be exported in the build's precision"
            )


def tensorrt_version() -> str:
    return trt.__version__
