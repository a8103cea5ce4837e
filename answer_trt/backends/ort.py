"""ONNX Runtime backend: one InferenceSession per component, CUDA provider when present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from export.iospec import ComponentSpec, Profile, check_shapes


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeEngine:
    """Runs one ONNX component; refuses shapes outside its built profile before running."""

    def __init__(self, path: Path, spec: ComponentSpec, profile: Profile, providers: list[str] | None = None) -> None:
        self.spec = spec
        self.profile = profile
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Between UNet calls the runtime runs torch ops; ORT's spin-waiting worker threads
        # would compete with them for the cores (measured on 2 cores: ~25% slower steps).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers or default_providers())
        self._dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._checked: tuple[tuple[int, ...], ...] | None = None

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        shapes = tuple(tuple(feeds[name].shape) for name in self.spec.input_names)
        if shapes != self._checked:  # check once per new shape set, not per step
            check_shapes(self.spec, self.profile, dict(zip(self.spec.input_names, shapes)))
            self._checked = shapes
        arrays = {
            name: np.ascontiguousarray(feeds[name].detach().cpu().numpy(), dtype=self._dtypes[name])
            for name in self.spec.input_names
        }
        outputs = self.session.run(self.spec.output_names, arrays)
        return {name: torch.from_numpy(np.asarray(out)) for name, out in zip(self.spec.output_names, outputs)}
