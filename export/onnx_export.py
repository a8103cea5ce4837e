"""Torch module -> ONNX file, names and dynamic axes from the component's IO spec,
followed by the graph clean-up (shape inference and the ONNX checker)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from export.iospec import ComponentSpec
from export.wrappers import sample_inputs

OPSET = 17
# Trace at batch 2 so the exporter cannot specialize the batch axis to 1.
TRACE_BATCH = 2


def export_onnx(module: nn.Module, spec: ComponentSpec, dims: dict[str, int], path: Path) -> None:
    """Export ``module`` to ``path``; ``dims`` binds the symbols for the trace inputs."""
    float_dtype = torch.float16 if any(t.dtype == "float16" for t in spec.inputs) else torch.float32
    inputs = sample_inputs(spec, {**dims, "batch": TRACE_BATCH}, float_dtype)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            module,
            tuple(inputs[name] for name in spec.input_names),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    clean_graph(path)


def clean_graph(path: Path) -> None:
    """Infer shapes into the graph and check it; the exporter has folded constants."""
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))
