"""TensorRT backend: deserialized plans behind the Engine interface.

- One device-memory block is shared by all engines' execution contexts, sized by the
  largest need (they run one at a time on one stream).
- Inputs and outputs are torch CUDA tensors: nothing passes through the host between steps.
- ``set_input_shape`` / ``set_tensor_address`` are called only when they change.
- Shapes outside the built profile are refused before anything runs (``check_shapes``);
  a plan for another TensorRT version or GPU, or a corrupt one, is refused with the
  command that rebuilds it.
- Work is enqueued on one CUDA stream created with cuda-python; the pipeline makes it
  torch's current stream (``torch.cuda.ExternalStream``), so the guidance and scheduler
  ops between engine calls are ordered without host synchronization.

Supported: TensorRT 10.12 or newer, 11.x (``bindings.check_tensorrt_version``, called by
``check_plan_compatible``). Every call here exists in both: the name-based tensor API
(``set_input_shape``, ``get_tensor_shape``, ``set_tensor_address``, ``execute_async_v3``),
``create_execution_context(USER_MANAGED)``, ``device_memory_size_v2`` and the two-argument
``set_device_memory`` (``device_memory_size`` is removed in 11.x in favour of ``device_memory_size_v2``:
NVIDIA, "Removed Python APIs and Replacements", TensorRT 10.x to 11.x; the deprecated
``create_execution_context_without_device_memory`` and ``device_memory`` property are not used).
Each of these was also found, with the same arguments, in the TensorRT 11.1 Python bindings'
source (NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``), as were ``Runtime``, ``Logger`` and
``deserialize_cuda_engine`` (any buffer).
Type-checked with ``tensorrt-stubs`` 10.13 (no 11.x stubs exist); no machine of ours can run
TensorRT, so this module has not been executed. ``tests/test_tensorrt_api.py`` keeps
removed names out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tensorrt as trt
import torch
from torch import Tensor

from answer_trt.backends.bindings import BindingState, check_plan_compatible
from answer_trt.errors import UserInputError
from answer_trt.iospec import ComponentSpec, Profile, check_shapes
from answer_trt.versions import gpu_capability

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
                "int32": torch.int32}


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


class CudaStream:
    """A CUDA stream made with cuda-python, usable by torch as an external stream."""

    def __init__(self) -> None:
        from cuda.bindings import runtime as cudart

        error, stream = cudart.cudaStreamCreate()
        if error != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaStreamCreate failed: {error}")
        self.handle = int(stream)
        self._stream = stream
        self.torch_stream = torch.cuda.ExternalStream(self.handle)  # type: ignore[no-untyped-call]

    def synchronize(self) -> None:
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaStreamSynchronize(self._stream)
        if error != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaStreamSynchronize failed: {error}")


class SharedDeviceMemory:
    """One activation-memory block for every execution context, grown to the largest need."""

    def __init__(self) -> None:
        self.block: Tensor | None = None
        self.contexts: list[tuple[trt.IExecutionContext, BindingState]] = []

    def attach(self, context: trt.IExecutionContext, size: int, state: BindingState) -> None:
        self.contexts.append((context, state))
        if self.block is None or self.block.numel() < size:
            # Growing moves the block: every context is re-pointed and rebinds everything.
            self.block = torch.empty(size, dtype=torch.uint8, device="cuda")
            for ctx, ctx_state in self.contexts:
                # (memory, size): the V2 form (setDeviceMemoryV2), not the deprecated `device_memory` property.
                ctx.set_device_memory(self.block.data_ptr(), self.block.numel())
                ctx_state.forget()
        else:
            context.set_device_memory(self.block.data_ptr(), self.block.numel())


class TensorRTEngine:
    """One component's plan, run on device tensors (see the module docstring)."""

    def __init__(
        self,
        plan_path: Path,
        spec: ComponentSpec,
        profile: Profile,
        runtime: trt.Runtime,
        memory: SharedDeviceMemory,
        rebuild_command: str,
    ) -> None:
        self.spec = spec
        self.profile = profile
        self.rebuild_command = rebuild_command
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise UserInputError(f"{plan_path} is not a TensorRT plan this machine can load: rebuild with "
                                 f"`{rebuild_command}`")
        self.engine = engine
        # USER_MANAGED + device_memory_size_v2 (since 10.1) replace the deprecated
        # create_execution_context_without_device_memory and the removed-in-11.x device_memory_size.
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self.state = BindingState()
        memory.attach(self.context, engine.device_memory_size_v2, self.state)
        self._checked: dict[str, tuple[int, ...]] | None = None

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shapes = {t.name: tuple(feeds[t.name].shape) for t in self.spec.inputs}
        if shapes != self._checked:
            check_shapes(self.spec, self.profile, shapes, self.rebuild_command)
            self._checked = shapes
        inputs = {
            t.name: feeds[t.name].to(device="cuda", dtype=TORCH_DTYPES[t.dtype]).contiguous() for t in self.spec.inputs
        }
        for name, shape in self.state.shape_updates(shapes).items():
            if not self.context.set_input_shape(name, shape):
                raise RuntimeError(f"{self.spec.name}: TensorRT refused shape {shape} for {name}")
        outputs = {
            t.name: torch.empty(_dims(self.context.get_tensor_shape(t.name)), dtype=TORCH_DTYPES[t.dtype],
                                device="cuda")
            for t in self.spec.outputs
        }
        addresses = {name: tensor.data_ptr() for name, tensor in (*inputs.items(), *outputs.items())}
        for name, address in self.state.address_updates(addresses).items():
            self.context.set_tensor_address(name, address)
        # Enqueue on torch's current stream: the pipeline makes it our cuda-python stream
        # (so torch's ops and the engines are ordered), and under CUDA-graph capture it is
        # the capturing stream.
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.spec.name}: TensorRT execution failed")
        return outputs


def load_engines(
    folder: Path,
    components: Mapping[str, tuple[str, ComponentSpec, Profile]],
    built_version: str | None,
    built_capability: str | None,
    rebuild_command: str,
) -> tuple[dict[str, TensorRTEngine], CudaStream]:
    """Deserialize every component's plan after checking it was built for this machine;
    returns the engines and the stream to run them on."""
    check_plan_compatible(built_version, built_capability, trt.__version__, str(gpu_capability()), rebuild_command,
                          torch.version.cuda)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    memory = SharedDeviceMemory()
    engines = {
        name: TensorRTEngine(folder / file, spec, profile, runtime, memory, rebuild_command)
        for name, (file, spec, profile) in components.items()
    }
    return engines, CudaStream()
