"""The training script runs end to end on a tiny budget and writes a model folder that
answer-trt loads and samples through its real path (quality needs the full budget)."""

from __future__ import annotations

import pytest
from safetensors import safe_open

import answer_trt
from answer_trt.synthetic import train


def test_training_script_writes_a_loadable_fp16_model(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert train.main(["--out", str(out), "--examples", "64", "--vae-steps", "2", "--unet-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("command: python -m answer_trt.synthetic.train")
    assert "unet/diffusion_pytorch_model.safetensors" in printed  # sha256 lines
    assert not out.with_name("shapes.partial").exists()
    for weights in out.rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as tensors:
            assert {str(tensors.get_tensor(k).dtype) for k in tensors.keys()} == {"torch.float16"}, weights
    pipe = answer_trt.load(str(out), backend="torch")
    images = pipe("a red circle and a blue square", steps=2, seed=0)
    assert images[0].size == (32, 32)


@pytest.mark.parametrize("step,expected", [(0, 0.01), (99, 1.0), (100, 1.0), (1000, 0.1)])
def test_learning_rate_warms_up_then_decays_to_a_tenth(step, expected):
    assert train.learning_rate_factor(step, total=1000, warmup=100) == pytest.approx(expected)
