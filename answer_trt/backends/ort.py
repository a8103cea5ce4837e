"""ONNX Runtime backend: one InferenceSession per component, CUDA provider when present.

On the CPU provider tensors go through host numpy arrays (zero-copy views of CPU torch
tensors). On the CUDA provider they are bound in place with IO binding: inputs from the
torch tensors' device pointers, outputs into torch buffers on the same device, so the
latents never leave the GPU between steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from answer_trt.errors import UserInputError
from answer_trt.iospec import ComponentSpec, Profile, ShapeCheck

# ONNX Runtime's type names for the IO spec's dtypes.
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
             "tensor(int64)": "int64", "tensor(int32)": "int32"}


GRAPH_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
EXECUTION_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


@dataclass(frozen=True)
class SessionSettings:
    """The ONNX Runtime session options every engine is made with. The defaults were
    chosen by measurement (benchmarks/README.md, "CPU: graph optimization and session
    options"; ``python -m benchmarks.session_options``); 0 threads means ONNX Runtime's
    own choice (one per physical core)."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # Between UNet calls the runtime runs torch ops; ORT's spin-waiting worker threads
    # would compete with them for the cores (measured on 2 cores: ~25% slower steps).
    allow_spinning: bool = False
    mem_pattern: bool = True
    graph_level: str = "all"
    execution_mode: str = "sequential"

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise UserInputError("ONNX Runtime thread counts must be 0 (its own choice) or more")
        if self.graph_level not in GRAPH_LEVELS:
            raise UserInputError(f"graph_level must be one of {', '.join(GRAPH_LEVELS)}, not {self.graph_level!r}")
        if self.execution_mode not in EXECUTION_MODES:
            raise UserInputError(f"execution_mode must be one of {', '.join(EXECUTION_MODES)}, not "
                                 f"{self.execution_mode!r}")

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.enable_mem_pattern = self.mem_pattern
        options.graph_optimization_level = GRAPH_LEVELS[self.graph_level]
        options.execution_mode = EXECUTION_MODES[self.execution_mode]
        return options

    def describe(self) -> str:
        """One line for the log: every setting."""
        return ", ".join(f"{k} {v}" for k, v in vars(self).items())


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@cache
def disable_telemetry() -> None:
    """Turn off ONNX Runtime's telemetry events (once; a no-op where this build of
    onnxruntime has no such switch)."""
    switch = getattr(ort, "disable_telemetry_events", None)
    if callable(switch):
        switch()


def check_graph_matches_spec(
    session: ort.InferenceSession, spec: ComponentSpec, path: Path, rebuild_command: str
) -> None:
    """Refuse a graph whose inputs or outputs (names, dtypes, fixed sizes) are not the
    spec's, before any run fails inside ONNX Runtime."""

    def signature(name: str, dtype: str, shape: Sequence[object]) -> tuple[str, str, tuple[object, ...]]:
        return name, dtype, tuple(d if isinstance(d, int) else "dynamic" for d in shape)

    graph = {signature(t.name, ORT_TYPES.get(t.type, t.type), t.shape)
             for t in (*session.get_inputs(), *session.get_outputs())}
    wanted = {signature(t.name, t.dtype, t.shape) for t in (*spec.inputs, *spec.outputs)}
    if graph != wanted:
        differ = ", ".join(sorted(name for name, *_ in graph ^ wanted))
        raise UserInputError(
            f"{path}: the graph's tensors do not match the manifest's spec ({differ}): rebuild the engines folder "
            f"with `{rebuild_command}`"
        )


class DeviceBinding:
    """IO binding of one session on ``device`` ("cuda", or "cpu" for tests): inputs bound
    from torch tensors' pointers, outputs into torch buffers. Output shapes are learned
    from ONNX Runtime on the first call with a new set of input shapes (ONNX Runtime
    allocates that once), then the buffers are allocated by torch and bound."""

    def __init__(self, session: ort.InferenceSession, spec: ComponentSpec, device: torch.device) -> None:
        self.session = session
        self.spec = spec
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu"
        self.index = device.index or 0
        self._output_shapes: dict[tuple[tuple[int, ...], ...], list[tuple[int, ...]]] = {}
        self._np = {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)}
        self._torch = {name: torch.from_numpy(np.empty(0, dtype)).dtype for name, dtype in self._np.items()}

    def run(self, feeds: Mapping[str, Tensor], shapes: tuple[tuple[int, ...], ...]) -> dict[str, Tensor]:
        binding = self.session.io_binding()
        inputs = {name: feeds[name].to(self.device, self._torch[name]).contiguous() for name in self.spec.input_names}
        for name, tensor in inputs.items():
            binding.bind_input(name, self.kind, self.index, self._np[name], tuple(tensor.shape), tensor.data_ptr())
        known = self._output_shapes.get(shapes)
        outputs: dict[str, Tensor] = {}
        for i, name in enumerate(self.spec.output_names):
            if known is None:
                binding.bind_output(name, self.kind, self.index)
            else:
                outputs[name] = torch.empty(known[i], dtype=self._torch[name], device=self.device)
                buffer = outputs[name]
                binding.bind_output(name, self.kind, self.index, self._np[name], tuple(buffer.shape), buffer.data_ptr())
        if self.kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written on torch's stream
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if known is None:  # first call with these shapes: ONNX Runtime allocated the outputs
            values = binding.get_outputs()
            self._output_shapes[shapes] = [tuple(v.shape()) for v in values]
            outputs = {name: torch.from_numpy(v.numpy()).to(self.device)
                       for name, v in zip(self.spec.output_names, values)}
        del inputs  # kept alive until the run finished: ONNX Runtime read their memory
        return outputs


class OnnxRuntimeEngine:
    """Runs one ONNX component; refuses shapes outside its built profile before running.
    ``rebuild_command`` (the folder's ``Manifest.build_command``) is what its errors say
    to run."""

    def __init__(
        self, path: Path, spec: ComponentSpec, profile: Profile, providers: list[str] | None = None,
        rebuild_command: str = "answer-trt build ... --force", io_binding: bool | None = None,
        settings: SessionSettings = SessionSettings(),
    ) -> None:
        """``io_binding``: bind tensors in place (default: on when the session runs on the
        CUDA provider; forcing it on the CPU provider is for tests). ``settings``: the
        session options (``SessionSettings``)."""
        self.spec = spec
        self.profile = profile
        self.rebuild_command = rebuild_command
        self.settings = settings
        disable_telemetry()
        self.session = ort.InferenceSession(str(path), settings.options(), providers=providers or default_providers())
        check_graph_matches_spec(self.session, spec, path, rebuild_command)
        self._dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._check_shapes = ShapeCheck(spec, profile, rebuild_command)
        on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.binding: DeviceBinding | None = None
        if io_binding if io_binding is not None else on_cuda:
            self.binding = DeviceBinding(self.session, spec, torch.device("cuda" if on_cuda else "cpu"))

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shapes = self._check_shapes(feeds)
        if self.binding is not None:
            return self.binding.run(feeds, shapes)
        arrays = {
            name: np.ascontiguousarray(feeds[name].detach().cpu().numpy(), dtype=self._dtypes[name])
            for name in self.spec.input_names
        }
        outputs = self.session.run(self.spec.output_names, arrays)
        return {name: torch.from_numpy(np.asarray(out)) for name, out in zip(self.spec.output_names, outputs)}
