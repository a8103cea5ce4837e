"""The guidance interval's default per method (issue 37): ``guidance_min_sigma`` left out
resolves to ANSWER's own default for ANSWER and to 0 (diffusers' CFG) for CFG and DNS; every
image records the value used, so a PNG replays to its pixels whatever the defaults become."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from answer_trt import config as config_module
from answer_trt.config import ANSWER_GUIDANCE_MIN_SIGMA, GuidanceConfig
from answer_trt.infotext import RECORD
from answer_trt.schema import from_parameters, request_fields
from tests.cli_run import file_pixels, run_cli

# Made with `answer-trt generate "a blue triangle and a red square" --model tiny --seed 3
# --steps 12` by the code before the default was resolved per method (commit 328cf04).
OLD_PNG = Path(__file__).parent / "data" / "answer-default-before-issue-37.png"
PROMPT = "a red circle and a blue square"


@pytest.mark.parametrize(("method", "expected"), [("answer", ANSWER_GUIDANCE_MIN_SIGMA), ("cfg", 0.0), ("dns", 0.0)])
def test_the_interval_left_out_resolves_per_method(method, expected):
    assert GuidanceConfig(method=method).interval_min_sigma == expected


def test_a_changed_answer_default_leaves_cfg_as_diffusers_and_a_given_value_wins(monkeypatch):
    monkeypatch.setattr(config_module, "ANSWER_GUIDANCE_MIN_SIGMA", 0.5)
    assert GuidanceConfig(method="answer").interval_min_sigma == 0.5
    assert GuidanceConfig(method="cfg").interval_min_sigma == 0.0
    assert GuidanceConfig(method="dns").interval_min_sigma == 0.0
    assert GuidanceConfig(method="answer", guidance_min_sigma=0.0).interval_min_sigma == 0.0
    assert GuidanceConfig(method="cfg", guidance_min_sigma=0.3).interval_min_sigma == 0.3


def test_the_schema_field_is_optional_and_its_help_names_each_methods_default():
    (field,) = [f for f in request_fields() if f.name == "guidance_min_sigma"]
    assert field.default is None
    help_text = field.metadata["schema"].help
    assert f"{ANSWER_GUIDANCE_MIN_SIGMA:g} for answer" in help_text and "0 for cfg and dns" in help_text


def test_an_image_records_the_interval_it_ran_with(ort_pipe, monkeypatch):
    monkeypatch.setattr(config_module, "ANSWER_GUIDANCE_MIN_SIGMA", 0.5)
    implicit = ort_pipe.generate(PROMPT, steps=8, seed=1)
    explicit = ort_pipe.generate(PROMPT, steps=8, seed=1, guidance_min_sigma=0.5)
    plain = ort_pipe.generate(PROMPT, steps=8, seed=1, guidance_min_sigma=0.0)
    record = from_parameters(implicit.images[0].info[RECORD])
    assert record.guidance_min_sigma == 0.5
    as_array = [np.asarray(g.images[0], dtype=np.int16) for g in (implicit, explicit, plain)]
    assert np.array_equal(as_array[0], as_array[1])
    assert np.abs(as_array[0] - as_array[2]).max() > 0  # the interval changes this picture
    cfg = ort_pipe.generate(PROMPT, steps=8, seed=1, method="cfg")
    assert from_parameters(cfg.images[0].info[RECORD]).guidance_min_sigma == 0.0


@pytest.mark.parametrize("answer_default", [ANSWER_GUIDANCE_MIN_SIGMA, 0.5])
def test_a_png_made_before_replays_to_its_pixels_whatever_answers_default(answer_default, tiny_model_dir,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "ANSWER_GUIDANCE_MIN_SIGMA", answer_default)
    out = tmp_path / "replayed.png"
    assert run_cli("generate", "--from-png", OLD_PNG, "-o", out) == 0
    assert np.array_equal(file_pixels(out), file_pixels(OLD_PNG))


def test_the_sweeps_rule_switches_only_to_a_threshold_worse_nowhere_and_better_pooled():
    """benchmarks/answer_default_sweep.py's verdict (issue 37, part 2) on made-up verdicts."""
    from benchmarks.answer_default_sweep import TODAY, candidate, decide

    rng = np.random.default_rng(0)
    today = (rng.random(256) < 0.6).astype(float)

    def flipped(share: float, to: float) -> list[float]:  # ``share`` of today's verdicts set to ``to``
        out = today.copy()
        out[rng.random(256) < share] = to
        return out.tolist()

    rows = {TODAY: 77, candidate(0.3): 74, candidate(0.5): 70, candidate(0.7): 63}
    better = {TODAY: today.tolist(), candidate(0.3): today.tolist(), candidate(0.5): flipped(0.3, 1.0),
              candidate(0.7): flipped(0.15, 1.0)}
    verdicts, chosen = decide([("a", better), ("b", better)], rows)
    assert chosen == 0.5  # the best pooled of those that pass; 0.3 is level (not better), so it fails
    assert [v.passes for v in verdicts] == [False, True, True] and verdicts[1].pooled > verdicts[2].pooled > 0
    worse_in_b = {**better, candidate(0.5): flipped(0.5, 0.0)}
    verdicts, chosen = decide([("a", better), ("b", worse_in_b)], rows)
    assert verdicts[1].worse_cells == ("b",) and not verdicts[1].passes and chosen == 0.7
    verdicts, chosen = decide([("a", better)], {**rows, candidate(0.5): 80, candidate(0.7): 78})
    assert chosen is None  # better, but dearer than today's default: kept
