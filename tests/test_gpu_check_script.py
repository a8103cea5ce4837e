"""The GPU check script's step functions, run on the CPU with a tiny SDXL-shaped UNet:
fused and unfused ANSWER steps agree, so the script's max-abs figure measures batching
effects only. (The timing itself needs a GPU.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_fused_and_unfused_steps_agree_on_cpu():
    from diffusers import UNet2DConditionModel

    gpu_check = load_script()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    ).eval()
    inputs = gpu_check.Inputs(8, 64, 32, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        fns = gpu_check.steps(gpu_check.unet_call(unet, inputs), inputs)
        fused, unfused = fns["answer_fused"](), fns["answer_unfused"]()
        cfg = fns["cfg"]()
    for a, b in zip(fused, unfused):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert cfg.shape == fused[0].shape and (cfg - fused[0]).abs().max() > 1e-3


def test_script_says_so_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run the check")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
