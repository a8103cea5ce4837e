"""`answer-trt bench` on the tiny model with few steps: its JSON is complete and sane,
and the call counts show one fused UNet call per ANSWER step."""

from __future__ import annotations

import json

import pytest

from answer_trt.bench.report import validate_report_json
from answer_trt.bench.stats import summarize
from answer_trt.cli import main
from answer_trt.errors import UserInputError


def test_summarize_order_statistics():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert (s.median, s.p90, s.min, s.runs) == (5.5, 9.0, 1.0, 10)
    assert summarize([2.0]).p90 == 2.0
    with pytest.raises(ValueError):
        summarize([])


def test_bench_cli_writes_a_valid_report(engines_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--engines", str(engines_dir), "--steps", "3", "--runs", "2", "--warmup", "1",
                 "--baseline", "torch", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "answer (unfused)" in table and "plain torch" in table and "runtime overhead" in table
    data = json.loads(out.read_text())
    assert validate_report_json(data) == []
    by_variant = {(r["method"], r["fused"]): r for r in data["results"]}
    assert set(by_variant) == {("answer", True), ("cfg", True), ("dns", True), ("answer", False)}
    # Fused: one UNet call per step. Unfused (the default: K = 4, chain only while sigma_t >= 0.5,
    # guidance off below sigma_t 0.7; 3 steps): 2 calls at the re-anchor step, then 1 (the
    # conditional prediction alone) at each of the two steps below 0.7.
    assert by_variant[("answer", True)]["unet_calls_per_step"] == 1.0
    assert by_variant[("answer", False)]["unet_calls_per_step"] == pytest.approx(4 / 3)
    assert by_variant[("cfg", True)]["unet_calls_per_step"] == 1.0
    assert set(data["ratios"]) == {"answer_over_cfg_step", "fused_speedup_over_unfused", "speedup_over_plain_torch"}
    assert all(v > 0 for v in data["ratios"].values())
    assert data["model"]["latent_shape"] == [1, 4, 8, 8] and data["config"]["steps"] == 3


def test_validator_catches_a_broken_report(engines_dir, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--engines", str(engines_dir), "--methods", "cfg", "--steps", "2", "--runs", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert validate_report_json(data) == []
    data["results"][0]["step_ms"]["min"] = data["results"][0]["step_ms"]["p90"] + 1
    del data["versions"]["torch"]
    problems = validate_report_json(data)
    assert any("not ordered" in p for p in problems) and any("versions.torch" in p for p in problems)


def test_bad_bench_requests(engines_dir, tmp_path, capsys):
    from answer_trt.bench.suite import BenchConfig

    with pytest.raises(UserInputError, match="--methods"):
        BenchConfig(methods=("answer", "pag"))
    with pytest.raises(UserInputError, match="--warmup"):
        BenchConfig(warmup=-1)
    assert main(["bench", "--engines", str(engines_dir), "--methods", "nope"]) == 2
    assert main(["bench", "--engines", str(engines_dir), "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_times_img2img_and_inpainting_beside_txt2img(engines_dir, tmp_path, capsys):
    """Issue 33: `bench --image --strength [--mask]` times the encoder call and the shorter loop:
    int(steps x strength) steps, one fused UNet call each, the encode stage only from an image."""
    import numpy as np
    from PIL import Image

    from answer_trt.loaders import from_engines

    height, width = from_engines(engines_dir, verify=False).default_size
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(image)
    values = np.zeros((height, width), np.uint8)
    values[:, width // 2:] = 255
    Image.fromarray(values).save(mask)
    for extra, workflow in (([], "img2img"), (["--mask", str(mask)], "inpaint")):
        out = tmp_path / f"{workflow}.json"
        assert main(["bench", "--engines", str(engines_dir), "--methods", "answer,cfg", "--steps", "10", "--runs",
                     "1", "--warmup", "0", "--image", str(image), "--strength", "0.6", *extra,
                     "--json", str(out)]) == 0
        table = capsys.readouterr().out
        assert f"answer {workflow}: encode (VAE encoder + noising)" in table and "6 of 10 steps" in table
        data = json.loads(out.read_text())
        assert validate_report_json(data) == []
        by = {(r["method"], r["workflow"]): r for r in data["results"]}
        assert set(by) == {("answer", "txt2img"), ("cfg", "txt2img"), ("answer", workflow), ("cfg", workflow)}
        for method in ("answer", "cfg"):
            assert by[(method, "txt2img")]["encode_ms"] is None and by[(method, "txt2img")]["denoising_steps"] == 10
            assert by[(method, workflow)]["encode_ms"]["median"] > 0
            assert by[(method, workflow)]["denoising_steps"] == 6
            assert by[(method, workflow)]["unet_calls_per_step"] == 1.0
            assert data["ratios"][f"{workflow}_over_txt2img_denoise_{method}"] > 0
    from answer_trt.bench.suite import BenchConfig

    with pytest.raises(UserInputError, match="--image"):
        BenchConfig(strength=0.6)
    assert main(["bench", "--engines", str(engines_dir), "--image", str(tmp_path / "none.png")]) == 2

