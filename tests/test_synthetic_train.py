"""The training script runs end to end on a tiny budget and writes a model folder that
answer-trt loads and samples through its real path (quality needs the full budget)."""

from __future__ import annotations

import answer_trt
from synthetic import train


def test_training_script_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert train.main(["--out", str(out), "--examples", "64", "--vae-minutes", "0.01", "--unet-minutes", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("command: python -m synthetic.train")
    assert "unet/diffusion_pytorch_model.safetensors" in printed  # sha256 lines
    pipe = answer_trt.load(str(out), backend="torch")
    images = pipe("a red circle and a blue square", steps=2, seed=0)
    assert images[0].size == (32, 32)
