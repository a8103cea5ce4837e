"""Seeded example inputs shaped by a component's IO spec: the trace inputs of the ONNX
export, and the inputs of the parity tests and the GPU check."""

from __future__ import annotations

import torch
from torch import Tensor

from answer_trt.iospec import CLIP_SKIP, TIME_IDS, ComponentSpec


def sample_inputs(
    spec: ComponentSpec, dims: dict[str, int], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Seeded example inputs shaped by the spec (trace inputs and parity tests)."""
    gen = torch.Generator().manual_seed(0)
    inputs: dict[str, Tensor] = {}
    for tensor in spec.inputs:
        shape = tensor.bind(dims)
        if tensor.name == CLIP_SKIP:  # 1 and 2 alternating: both paths of the layer choice
            inputs[tensor.name] = torch.arange(shape[0], dtype=torch.int64) % 2 + 1
        elif tensor.dtype == "int64":
            inputs[tensor.name] = torch.randint(0, 100, shape, generator=gen, dtype=torch.int64)
        elif tensor.name == "timestep":
            inputs[tensor.name] = torch.randint(1, 1000, shape, generator=gen).to(dtype)
        elif tensor.name == TIME_IDS:  # sizes and crop offsets, as SDXL sees them
            inputs[tensor.name] = torch.tensor([512, 512, 0, 0, 512, 512]).expand(shape).to(dtype)
        else:
            inputs[tensor.name] = torch.randn(shape, generator=gen).to(dtype)
    return {name: t.to(device) for name, t in inputs.items()}
