"""The diagnosis script: per-step series from the sampler's probe, a plot and JSON."""

from __future__ import annotations

import json

import pytest

from answer_trt.synthetic import diagnose
from answer_trt.synthetic.compliance import MethodSpec


def test_series_obey_the_identities(tiny_model_dir):
    from answer_trt.loaders import build_cached, from_engines

    pipe = from_engines(build_cached("tiny-random", batch=2), verify=False)
    captions = ["a red circle and a blue square", "a green triangle"]
    cfg = diagnose.trace(pipe, MethodSpec("cfg"), captions, 4, 5.0)
    k1 = diagnose.trace(pipe, MethodSpec("answer", 1), captions, 4, 5.0)
    k2 = diagnose.trace(pipe, MethodSpec("answer", 2), captions, 4, 5.0)
    assert len(cfg.push) == 4 and cfg.negative == [0.0] * 4 and cfg.drift == [0.0] * 4
    # K = 1 is CFG: the same guidance term and push at every step; the chain never drifts.
    assert k1.guidance == pytest.approx(cfg.guidance, rel=1e-4) and k1.push == pytest.approx(cfg.push, rel=1e-4)
    assert k1.drift == [0.0] * 4
    # K = 2: z == x at steps 0 and 2, and z has moved away at steps 1 and 3.
    assert k2.drift[0] == 0.0 and k2.drift[2] == 0.0 and min(k2.drift[1], k2.drift[3]) > 0
    for steps in (k1, k2):
        for i, sigma in enumerate(steps.sigmas):  # push = sigma / alpha * guidance term
            assert steps.push[i] < steps.guidance[i] * sigma / (1 - sigma * sigma) ** 0.5 * 1.001 + 1e-9


def test_command_line_writes_png_and_json(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(diagnose, "METHODS", (MethodSpec("cfg"), MethodSpec("answer", 2)))
    out = tmp_path / "d.png"
    assert diagnose.main(["--model", "tiny-random", "--prompts", "2", "--steps", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.with_suffix(".json").read_text())
    assert [t["label"] for t in report["traces"]] == ["cfg", "answer K=2 parallel"]
    assert all(len(t["push"]) == 3 for t in report["traces"])
    assert diagnose.main(["--out", str(tmp_path / "d.txt")]) == 2
