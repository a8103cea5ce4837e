"""Torch backend (eager): the reference every exported engine is compared with; on a
CUDA device it runs each component in the dtype of ``answer_trt.precision``'s fp16 rule
(the GPU path where TensorRT is absent)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from answer_trt.iospec import TIME_IDS, ComponentSpec

# Inputs fed in float32 whatever the module's dtype: the UNet turns them into sinusoidal
# embeddings and casts those itself (diffusers keeps timesteps in float32 too).
FLOAT32_INPUTS = frozenset({"timestep", TIME_IDS})


class TorchEngine:
    """Runs the spec-shaped torch module of one component (see ``torch_modules``).

    ``dtype``: the module's floating dtype; float inputs are cast to it on ``device``
    (a no-op for tensors already there in that dtype), except ``FLOAT32_INPUTS``."""

    def __init__(
        self, module: nn.Module, spec: ComponentSpec, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> None:
        self.spec = spec
        self.module = module.to(device=device, dtype=dtype).eval()
        self.dtype = dtype
        self.device = torch.device(device)

    def input_dtype(self, name: str, spec_dtype: str) -> torch.dtype | None:
        """The dtype input ``name`` is fed in (``None``: keep an integer input's own)."""
        if not spec_dtype.startswith("float"):
            return None
        return torch.float32 if name in FLOAT32_INPUTS else self.dtype

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        args = [
            feeds[t.name].to(self.device, self.input_dtype(t.name, t.dtype), non_blocking=True)
            for t in self.spec.inputs
        ]
        with torch.inference_mode():
            out = self.module(*args)
        outputs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.spec.output_names, outputs))
