"""Torch module -> ONNX file, names and dynamic axes from the component's IO spec,
followed by the graph clean-up (shape inference and the ONNX checker)."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from answer_trt.export.sample_inputs import sample_inputs
from answer_trt.iospec import ComponentSpec, ModelDims
from answer_trt.manifest import external_data_name

OPSET = 17
# Trace at batch 2 so the exporter cannot specialize the batch axis to 1, and at a
# small latent (the spatial axes are dynamic): tracing a full-size UNet at 64x64 latents
# in fp16 on a CPU takes many minutes, at 8x8 seconds.
TRACE_BATCH = 2
TRACE_LATENT = 8
# The UNet's text axis is traced at two chunks, so that no length of one chunk is taken for a constant.
TRACE_CHUNKS = 2


def trace_binding(dims: ModelDims) -> dict[str, int]:
    size = TRACE_LATENT * dims.vae_scale_factor
    return dims.bind(TRACE_BATCH, size, size, TRACE_CHUNKS)


# Weights of a larger component go to one external-data file beside the graph
# (``unet.onnx.data``): the graph stays small and protobuf's 2 GB limit is never hit.
EXTERNAL_DATA_BYTES = 256 * 2**20


def external_data_file(path: Path) -> str:
    """The external-data file beside ``path``, named by the runtime's rule (the loader
    checks it against the manifest)."""
    return external_data_name(path.name)


def export_onnx(module: nn.Module, spec: ComponentSpec, dims: ModelDims, path: Path) -> list[Path]:
    """Export ``module`` to ``path``, traced on inputs of ``trace_binding(dims)``.
    Returns the files written (the graph, and its external data if any)."""
    half = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    float_dtype = next((half[t.dtype] for t in spec.inputs if t.dtype in half), torch.float32)
    device = next(module.parameters()).device  # trace where the module lives (a GPU is much faster)
    inputs = sample_inputs(spec, trace_binding(dims), float_dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes >= EXTERNAL_DATA_BYTES
    # Large exports may scatter one file per tensor: export into a folder of its own.
    trace_dir = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=path.parent))
    traced = trace_dir / path.name
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(
                module,
                tuple(inputs[name] for name in spec.input_names),
                str(traced),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        if external:
            model = onnx.load(str(traced))
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=external_data_file(path), size_threshold=1024)
            del model
        else:
            traced.replace(path)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    clean_graph(path)
    return [path, path.parent / external_data_file(path)] if external else [path]


def clean_graph(path: Path) -> None:
    """Infer shapes into the graph and check it; the exporter has folded constants."""
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))
