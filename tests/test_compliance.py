"""The compliance benchmark's logic with stand-in drawers (ground truth, blank, swapped),
its intervals, and its command line on a random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from answer_trt.errors import UserInputError
from synthetic import compliance
from synthetic.compliance import DEFAULT_METHODS, MethodSpec, bootstrap_mean, run_compliance
from synthetic.dataset import BACKGROUND, make_example, prompts, render

PROMPT_SEED = 7


def _truth(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
    example = make_example(PROMPT_SEED, seed, two_objects=True)
    assert example.caption == prompt  # prompt i is drawn with seed i
    return example.image, 0.5


def _blank(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
    return np.full((32, 32, 3), BACKGROUND, dtype=np.uint8), 0.25


def _ground_truth_for_cfg_blank_otherwise(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
    return _truth(prompt, spec, seed) if spec.method == "cfg" else _blank(prompt, spec, seed)


def _mirrored(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
    objects = make_example(PROMPT_SEED, seed, two_objects=True).objects
    return render(objects, 32)[:, ::-1].copy(), 0.1


def test_ground_truth_images_comply_fully_and_blank_ones_not_at_all():
    asked = prompts(PROMPT_SEED, 12)
    results = run_compliance(_ground_truth_for_cfg_blank_otherwise, [DEFAULT_METHODS[0], DEFAULT_METHODS[-1]],
                             asked)
    cfg, dns = results
    assert all(cfg.rates[m].value == 1.0 for m in compliance.METRICS)
    assert all(dns.rates[m].value == 0.0 for m in compliance.METRICS)
    assert dns.vs_cfg["all"].value == -1.0 and cfg.vs_cfg["all"].value == 0.0
    assert cfg.seconds_per_image == pytest.approx(0.5) and dns.seconds_per_image == pytest.approx(0.25)


def test_mirrored_images_fail_on_side():
    asked = prompts(PROMPT_SEED, 24)
    (result,) = run_compliance(_mirrored, [DEFAULT_METHODS[0]], asked)
    # Only prompts whose two objects share a colour can pass when left and right swap.
    same_colour = np.mean([a.colour == b.colour for a, b in asked])
    assert result.rates["side"].value == pytest.approx(same_colour) and same_colour < 0.5
    assert result.rates["all"].value <= same_colour


def test_first_method_must_be_cfg():
    with pytest.raises(UserInputError, match="first method must be cfg"):
        run_compliance(_truth, [DEFAULT_METHODS[-1]], prompts(PROMPT_SEED, 2))


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    small, large = (rng.integers(0, 2, size=(n, 1)).astype(float) for n in (40, 4000))
    (s,), (l,) = bootstrap_mean(small), bootstrap_mean(large)
    assert s.low <= s.value <= s.high and l.low <= l.value <= l.high
    assert (l.high - l.low) < (s.high - s.low) / 5
    (constant,) = bootstrap_mean(np.ones((10, 1)))
    assert (constant.low, constant.value, constant.high) == (1.0, 1.0, 1.0)


def test_default_methods_cover_the_issue_list():
    labels = [spec.label for spec in DEFAULT_METHODS]
    assert labels[0] == "cfg" and "dns" in labels
    assert {(s.dns_steps, s.mode) for s in DEFAULT_METHODS if s.method == "answer"} == {
        (k, mode) for k in (2, 4, 8) for mode in ("parallel", "inner")}


def test_command_line_writes_json_and_refuses_unknown_methods(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "c.json"
    args = ["--model", "tiny-random", "--prompts", "3", "--steps", "2", "--methods", "cfg,answer-K=2-inner",
            "--json", str(out)]
    assert compliance.main(args) == 0
    report = json.loads(out.read_text())
    assert [m["label"] for m in report["methods"]] == ["cfg", "answer K=2 inner"]
    assert report["checker_on_ground_truth"]["objects"] == 6 and report["prompts"] == 3
    assert set(report["methods"][1]["rates"]) == set(compliance.METRICS)
    assert report["command"].startswith("python -m synthetic.compliance --model tiny-random")
    assert "all three" in capsys.readouterr().out
    assert compliance.main(["--model", "tiny-random", "--methods", "cfg,answer-K=3-inner"]) == 2
    assert "unknown method(s) answer-K=3-inner" in capsys.readouterr().err
    assert compliance.main(["--prompts", "1"]) == 2
