"""The full-size SD-1.5 UNet (random weights) exports to ONNX in fp16 on the CPU, with its
weights as external data, passes the ONNX checker and shape inference, and runs.

Slow (about a minute and 7 GB of memory on our 2-core machines); CI runs it."""

from __future__ import annotations

import resource
import time

import numpy as np
import onnx
import pytest
import torch

from answer_trt.backends.torch_modules import UNetModule
from answer_trt.export.onnx_export import export_onnx
from answer_trt.iospec import ModelDims, component_specs

pytestmark = pytest.mark.slow

SD15_DIMS = ModelDims(text_max_length=77, text_hidden_size=768, latent_channels=4, vae_scale_factor=8,
                      default_latent_size=64)


def test_full_size_sd15_unet_exports_in_fp16_with_external_data(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # SD 1.5's UNet config
    assert 855e6 < sum(p.numel() for p in unet.parameters()) < 865e6
    spec = component_specs(SD15_DIMS)["unet"].with_dtype("float16")
    started = time.perf_counter()
    files = export_onnx(UNetModule(unet.half()), spec, SD15_DIMS, tmp_path / "unet.onnx")
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"full-size SD-1.5 UNet fp16 export: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
    del unet

    assert [f.name for f in files] == ["unet.onnx", "unet.onnx.data"]
    assert files[0].stat().st_size < 16 * 2**20  # the graph alone
    assert files[1].stat().st_size > 1.6e9  # 860 M fp16 weights
    onnx.checker.check_model(str(files[0]))

    graph = onnx.load(str(files[0]), load_external_data=False).graph

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in graph.input}
    assert list(inputs) == spec.input_names
    assert dims(inputs["sample"]) == ["batch", 4, "latent_height", "latent_width"]
    assert dims(inputs["encoder_hidden_states"]) == ["batch", "text_length", 768]  # chunks of 77: long prompts
    assert inputs["sample"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    (output,) = graph.output
    assert output.name == "noise_pred" and dims(output) == ["batch", 4, "latent_height", "latent_width"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    for tokens in (77, 3 * 77):  # one chunk, and A1111's three (225 tokens)
        feeds = {
            "sample": np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float16),
            "timestep": np.array([500], dtype=np.float16),
            "encoder_hidden_states": np.random.default_rng(1).standard_normal((1, tokens, 768)).astype(np.float16),
        }
        (noise_pred,) = session.run(None, feeds)
        assert noise_pred.shape == (1, 4, 8, 8) and np.isfinite(noise_pred).all()
