"""ONNX -> TensorRT plan, one per component, with the optimization profile of the IO
spec, fp16 / bf16 / fp32 layer selection and a persistent timing cache.

Written against the TensorRT 10 Python API and type-checked with ``tensorrt-stubs``;
no machine of ours can run TensorRT, so this module has not been executed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tensorrt as trt

from answer_trt.files import atomic_path
from answer_trt.iospec import ComponentSpec, Profile
from export.profiles import profile_shapes

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
    serialized engine to ``plan_path`` atomically; the timing cache is read and updated."""
    logger = _Logger(log)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)

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


def tensorrt_version() -> str:
    return trt.__version__
