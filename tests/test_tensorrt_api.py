"""The TensorRT API we may use: TensorRT 10.12 or newer and 11.x (strongly typed builds).

- No name that TensorRT 11 removed (or that 10.x deprecated on the way there) appears in the
  TensorRT modules: NVIDIA, "Migrating from TensorRT 10.x to 11.x" -> "Removed Python APIs
  and Replacements". The stubs stop at 10.13, so the strict type check cannot see these.
- ``build_plan`` runs against a fake ``tensorrt`` shaped like 11.x (no precision builder
  flags at all): the network is created strongly typed, no flag is set, and a graph whose
  types disagree with the IO spec is refused.
- Which dtype each component's graph is exported in (``answer_trt.precision.component_dtype``), and
  the supported-version check.
TensorRT itself cannot be installed on our machines; nothing here runs it."""

from __future__ import annotations

import ast
import enum
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from answer_trt.backends.bindings import (
    MIN_TENSORRT,
    TENSORRT_REQUIREMENTS,
    check_plan_compatible,
    check_tensorrt_version,
    tensorrt_install_hint,
    tensorrt_major_minor,
    tensorrt_package_for_cuda,
)
from answer_trt.errors import UserInputError
from answer_trt.iospec import TEXT_ENCODER, UNET, VAE_DECODER, ModelDims, component_profiles, component_specs
from answer_trt.precision import component_dtype

REPO = Path(__file__).resolve().parents[1]
DIMS = ModelDims(text_max_length=77, text_hidden_size=768, latent_channels=4, vae_scale_factor=8,
                 default_latent_size=64)

# Every file that calls TensorRT.
TRT_SOURCES = sorted(
    {REPO / "export" / "tensorrt_build.py", REPO / "benchmarks" / "gpu_check.py",
     # OpenVINO's backend names OpenVINO's own capabilities ("BF16"), not TensorRT's removed flags
     *(p for p in (REPO / "answer_trt" / "backends").glob("*.py") if p.name != "openvino.py")}
)

# BuilderFlag members removed in 11.x (weak typing and implicit quantization).
REMOVED_BUILDER_FLAGS = frozenset({
    "FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
    "DIRECT_IO",
})
# Other names removed in 11.x, and names deprecated in 10.x whose replacements we use.
REMOVED_NAMES = frozenset({
    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
    # INT8 calibration -> explicit quantization (Q/DQ)
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "CalibrationAlgoType", "int8_calibrator", "set_calibration_profile",
    "get_calibration_profile", "QuantizationFlag", "set_quantization_flag", "get_quantization_flag",
    "clear_quantization_flag", "quantization_flags",
    # algorithm selection -> editable timing cache
    "IAlgorithm", "IAlgorithmContext", "IAlgorithmIOInfo", "IAlgorithmSelector", "IAlgorithmVariant",
    "algorithm_selector",
    # platform queries -> strong typing / CUDA
    "platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32",
    # V1 memory APIs -> device_memory_size_v2, create_execution_context(USER_MANAGED), set_device_memory
    "device_memory_size", "get_device_memory_size_for_profile", "create_execution_context_without_device_memory",
    # binding-index API (removed in 10.0) and the implicit/explicit batch flag (deprecated 10.0)
    "execute_async_v2", "execute_async", "get_binding_shape", "set_binding_shape", "get_binding_dtype",
    "binding_is_input", "num_bindings", "max_batch_size", "EXPLICIT_BATCH",
})


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def removed_api_uses(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: name`` for each use of a removed name: as an identifier or attribute,
    ``BuilderFlag.<removed>``, or a string constant equal to one (``getattr(...)``).
    Comments and docstrings may mention them."""
    tree = ast.parse(source, filename)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            if node.attr in REMOVED_NAMES:
                name = node.attr
            elif node.attr in REMOVED_BUILDER_FLAGS and isinstance(node.value, (ast.Attribute, ast.Name)):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
                if owner == "BuilderFlag":
                    name = f"BuilderFlag.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in REMOVED_NAMES:
            name = node.id
        elif isinstance(node, (ast.ImportFrom)):
            hits = [a.name for a in node.names if a.name in REMOVED_NAMES]
            name = ", ".join(hits) or None
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and node.value in REMOVED_NAMES | REMOVED_BUILDER_FLAGS):
            name = repr(node.value)
        if name:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def test_no_removed_tensorrt_api_in_the_tensorrt_modules():
    assert any(p.name == "tensorrt.py" for p in TRT_SOURCES) and any(p.name == "tensorrt_build.py" for p in TRT_SOURCES)
    uses = [u for path in TRT_SOURCES for u in removed_api_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert uses == []


def test_the_removed_api_scan_bites():
    probe = '''
"""Docstrings may say BuilderFlag.FP16 and device_memory_size."""
import tensorrt as trt
from tensorrt import IInt8EntropyCalibrator2

def build(config, engine, network):
    # comments may say trt.BuilderFlag.BF16
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(getattr(trt.BuilderFlag, "BF16"))
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    config.int8_calibrator = None
    size = engine.device_memory_size
    ok = (engine.device_memory_size_v2, trt.DataType.BF16, trt.DataType.HALF, trt.BuilderFlag.TF32)
'''
    uses = removed_api_uses(probe)
    assert sorted(u.split(": ", 1)[1] for u in uses) == sorted([
        "IInt8EntropyCalibrator2", "BuilderFlag.FP16", "'BF16'", "OBEY_PRECISION_CONSTRAINTS", "int8_calibrator",
        "device_memory_size",
    ]), uses


# --- a fake TensorRT 11 -----------------------------------------------------------------


class FakeTensor:
    def __init__(self, name: str, dtype: object) -> None:
        self.name, self.dtype = name, dtype


class FakeTimingCache:
    def serialize(self) -> bytes:
        return b"timing"


class FakeConfig:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def set_memory_pool_limit(self, pool, size):
        self.calls.append(("set_memory_pool_limit", pool, size))

    def set_flag(self, flag):
        self.calls.append(("set_flag", flag))

    def add_optimization_profile(self, profile):
        self.calls.append(("add_optimization_profile",))

    def create_timing_cache(self, data):
        self.calls.append(("create_timing_cache", bytes(data)))
        return FakeTimingCache()

    def set_timing_cache(self, cache, ignore_mismatch):
        self.calls.append(("set_timing_cache", ignore_mismatch))
        return True

    def get_timing_cache(self):
        return FakeTimingCache()


def fake_tensorrt(version: str, strongly_typed_value: int, graph: dict[str, str], calls: list) -> types.ModuleType:
    """A ``tensorrt`` module with just what ``build_plan`` may touch; ``BuilderFlag`` has no
    precision member (as in 11.x), so using one raises AttributeError."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT32 = 3
        BF16 = 7
        INT64 = 8

    class BuilderFlag(enum.Enum):
        TF32 = 7
        REFIT = 8

    # 10.x: EXPLICIT_BATCH = 0, STRONGLY_TYPED = 1; 11.x drops EXPLICIT_BATCH.
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                 {"STRONGLY_TYPED": strongly_typed_value})

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self) -> None:
            pass

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs = [FakeTensor(n, DataType[t]) for n, t in graph.items() if not n.startswith("out:")]
            self.outputs = [FakeTensor(n[4:], DataType[t]) for n, t in graph.items() if n.startswith("out:")]

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

    class Builder:
        def __init__(self, logger) -> None:
            calls.append(("Builder",))

        def create_network(self, flags: int = 0):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return FakeConfig(calls)

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", Path(path).name))
            return True

    trt.DataType, trt.BuilderFlag = DataType, BuilderFlag
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.Dims = lambda dims: tuple(dims)
    return trt


def load_tensorrt_build(monkeypatch, trt: types.ModuleType) -> types.ModuleType:
    """``export/tensorrt_build.py`` imported against ``trt``, under a private name (the real
    module, if imported elsewhere, is left alone)."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    spec = importlib.util.spec_from_file_location("_tensorrt_build_under_test", REPO / "export" / "tensorrt_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRT_NAMES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32"}


def graph_of(spec) -> dict[str, str]:
    graph = {t.name: TRT_NAMES[t.dtype] for t in spec.inputs}
    graph.update({f"out:{t.name}": TRT_NAMES[t.dtype] for t in spec.outputs})
    return graph


@pytest.mark.parametrize("version, strongly_typed_value", [("10.12.0.36", 1), ("10.13.0.35", 1), ("11.0.0.1", 0)])
@pytest.mark.parametrize("precision, dtype", [("fp16", "float16"), ("bf16", "bfloat16"), ("fp32", "float32")])
def test_build_plan_is_strongly_typed_and_sets_no_precision_flag(tmp_path, monkeypatch, version,
                                                                 strongly_typed_value, precision, dtype):
    spec = component_specs(DIMS)[UNET].with_dtype(dtype)
    profile = component_profiles(DIMS, 1, 512, 512)[UNET]
    calls: list = []
    trt = fake_tensorrt(version, strongly_typed_value, graph_of(spec), calls)
    build = load_tensorrt_build(monkeypatch, trt)
    (tmp_path / "unet.onnx").write_bytes(b"onnx")

    build.build_plan(tmp_path / "unet.onnx", spec, profile, precision, tmp_path / "unet.plan",
                     tmp_path / "timing.cache", log=lambda msg: None)

    # 10.x opts in with the STRONGLY_TYPED bit; 11.x is always strongly typed and its flag is deprecated.
    assert ("create_network", 0 if version.startswith("11.") else 1 << strongly_typed_value) in calls
    assert [c for c in calls if c[0] == "set_flag"] == []
    assert (tmp_path / "unet.plan").read_bytes() == b"plan"
    assert (tmp_path / "timing.cache").read_bytes() == b"timing"
    assert ("set_timing_cache", False) in calls
    assert {c[1] for c in calls if c[0] == "set_shape"} == set(spec.input_names)


def test_build_plan_refuses_a_graph_exported_in_another_precision(tmp_path, monkeypatch):
    spec = component_specs(DIMS)[UNET].with_dtype("float16")
    fp32_graph = graph_of(component_specs(DIMS)[UNET])
    calls: list = []
    build = load_tensorrt_build(monkeypatch, fake_tensorrt("11.0.0.1", 0, fp32_graph, calls))
    with pytest.raises(RuntimeError, match="sample.*float16.*strongly typed"):
        build.build_plan(tmp_path / "unet.onnx", spec, component_profiles(DIMS, 1, 512, 512)[UNET], "fp16",
                         tmp_path / "unet.plan", tmp_path / "timing.cache", log=lambda msg: None)
    assert ("build_serialized_network",) not in calls and not (tmp_path / "unet.plan").exists()


def test_build_plan_refuses_tensorrt_older_than_10_12(tmp_path, monkeypatch):
    spec = component_specs(DIMS)[UNET]
    calls: list = []
    build = load_tensorrt_build(monkeypatch, fake_tensorrt("10.11.0.33", 1, graph_of(spec), calls))
    monkeypatch.setattr(build, "torch_cuda_version", lambda: "13.0")  # the package named is torch's CUDA's
    with pytest.raises(UserInputError, match=r"TensorRT 10.11.0.33 is not supported.*10.12 or newer.*"
                                             r'pip install "tensorrt-cu13>=10.13.2,<12"'):
        build.build_plan(tmp_path / "unet.onnx", spec, component_profiles(DIMS, 1, 512, 512)[UNET], "fp32",
                         tmp_path / "unet.plan", tmp_path / "timing.cache", log=lambda msg: None)
    assert calls == []


# --- versions and graph dtypes -----------------------------------------------------------


def test_supported_tensorrt_versions():
    assert MIN_TENSORRT == (10, 12)
    assert tensorrt_major_minor("10.13.0.35") == (10, 13) and tensorrt_major_minor("11.0") == (11, 0)
    assert tensorrt_major_minor("dev") is None and tensorrt_major_minor("10") is None
    for ok in ("10.12.0.36", "10.13.2.6", "10.15.1", "11.0.0.1", "11.4.1"):
        check_tensorrt_version(ok)
    for old in ("10.11.0.33", "10.9.0", "8.6.1", "9.3.0", "unknown"):
        with pytest.raises(UserInputError, match="not supported") as info:
            check_tensorrt_version(old)
        assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="10.11.0.33 is not supported"):
        check_plan_compatible("10.11.0.33", "9.0", "10.11.0.33", "9.0", "answer-trt build --force")
    check_plan_compatible("11.0.0.1", "9.0", "11.0.0.1", "9.0", "answer-trt build --force")
    with pytest.raises(UserInputError, match="built with TensorRT 10.13.0.35, this machine has 11.0.0.1"):
        check_plan_compatible("10.13.0.35", "9.0", "11.0.0.1", "9.0", "answer-trt build --force")


def test_graph_dtype_puts_the_precision_in_the_graph():
    for precision, half in (("fp16", "float16"), ("bf16", "bfloat16")):
        assert component_dtype(UNET, precision, force_upcast=False) == half
        assert component_dtype(UNET, precision, force_upcast=True) == half
        assert component_dtype(VAE_DECODER, precision, force_upcast=False) == half
        assert component_dtype(VAE_DECODER, precision, force_upcast=True) == "float32"
        assert component_dtype(TEXT_ENCODER, precision, force_upcast=False) == "float32"
    for component in (UNET, VAE_DECODER, TEXT_ENCODER):
        assert component_dtype(component, "fp32", force_upcast=False) == "float32"
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        component_dtype(UNET, "int8", force_upcast=False)


# --- which package: extras and install messages per CUDA major ------------------------------


def test_the_extras_name_the_requirements_the_messages_give():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["tensorrt-cu12"] == [TENSORRT_REQUIREMENTS[12]]
    assert extras["tensorrt-cu13"] == [TENSORRT_REQUIREMENTS[13]]
    assert extras["tensorrt"] == extras["tensorrt-cu12"]  # the older name keeps its meaning
    for major, requirement in TENSORRT_REQUIREMENTS.items():
        assert requirement.startswith(f"tensorrt-cu{major}>=") and requirement.endswith(",<12")
    # The floors are the supported minimum (cu13 has no release before 10.13.2).
    assert TENSORRT_REQUIREMENTS[12] == f"tensorrt-cu12>={MIN_TENSORRT[0]}.{MIN_TENSORRT[1]},<12"


def test_the_tensorrt_package_follows_the_cuda_major_version():
    assert tensorrt_package_for_cuda("12.8") == "tensorrt-cu12"
    assert tensorrt_package_for_cuda("12.1") == "tensorrt-cu12"
    assert tensorrt_package_for_cuda("13.0") == "tensorrt-cu13"
    for none in (None, "", "11.8", "14.0", "rocm", ".13"):
        assert tensorrt_package_for_cuda(none) is None, none


def test_install_hints_name_one_package_where_torch_knows_the_cuda_and_say_how_to_choose_otherwise():
    cu13 = tensorrt_install_hint("13.0")
    assert 'pip install "tensorrt-cu13>=10.13.2,<12"' in cu13 and "cu12" not in cu13 and "CUDA 13.0" in cu13
    cu12 = tensorrt_install_hint("12.8")
    assert 'pip install "tensorrt-cu12>=10.12,<12"' in cu12 and "cu13" not in cu12
    for unknown in (None, "11.8"):
        hint = tensorrt_install_hint(unknown)
        assert '"tensorrt-cu12>=10.12,<12"` for CUDA 12' in hint and '"tensorrt-cu13>=10.13.2,<12"` for CUDA 13' in hint
        assert "torch.version.cuda" in hint and "nvidia-smi" in hint and "\n" not in hint
    with pytest.raises(UserInputError, match=r'10.9.0 is not supported.*pip install "tensorrt-cu13>=10.13.2,<12"'):
        check_plan_compatible("10.9.0", "9.0", "10.9.0", "9.0", "answer-trt build --force", cuda_version="13.0")
    with pytest.raises(UserInputError, match="for CUDA 12 or .* for CUDA 13, choosing by"):
        check_tensorrt_version("10.9.0")
