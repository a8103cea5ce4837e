"""Torch backend (eager): the reference every exported engine is compared with; on a
CUDA device it runs in fp16 (the GPU path where TensorRT is absent)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from answer_trt.iospec import ComponentSpec


class TorchEngine:
    """Runs the spec-shaped torch module of one component (see ``torch_modules``)."""

    def __init__(
        self, module: nn.Module, spec: ComponentSpec, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> None:
        self.spec = spec
        self.module = module.to(device=device, dtype=dtype).eval()
        self.dtype = dtype
        self.device = torch.device(device)

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        args = [
            feeds[t.name].to(self.device, self.dtype if t.dtype.startswith("float") else None)
            for t in self.spec.inputs
        ]
        with torch.inference_mode():
            out = self.module(*args)
        outputs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.spec.output_names, outputs))
