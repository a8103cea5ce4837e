"""The compliance benchmark's logic with stand-in drawers (ground truth, blank, swapped),
its intervals, and its command line on a random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from answer_trt.errors import UserInputError
from answer_trt.synthetic import compliance
from answer_trt.synthetic.compliance import CANDIDATES, CFG, MethodSpec, bootstrap_mean, run_compliance
from answer_trt.synthetic.dataset import (
    BACKGROUND,
    BIASED_COLOUR,
    COLOURS,
    FAMILIES,
    ShapeObject,
    bias_negative,
    bias_shape_negative,
    family_example,
    goes_against_bias,
    make_example,
    prompts,
    render,
)

PROMPT_SEED = 7
DNS = MethodSpec("dns")


def per_image(draw_one):
    """A batched Draw from a one-image stand-in."""

    def draw(captions, negatives, spec, seeds, w):
        assert len(negatives) == len(captions)
        drawn = [draw_one(caption, spec, seed) for caption, seed in zip(captions, seeds)]
        return [image for image, _ in drawn], sum(seconds for _, seconds in drawn)

    return draw


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


def _with_extra_object(prompt: str, spec: MethodSpec, seed: int) -> tuple[np.ndarray, float]:
    """Ground truth plus a 4x4 third object in a free corner: the objects are right, the count is not."""
    image = make_example(PROMPT_SEED, seed, two_objects=True).image.copy()
    for y, x in ((0, 0), (0, 28), (28, 0), (28, 28)):
        area = image[max(y - 2, 0):y + 6, max(x - 2, 0):x + 6]
        if (area == BACKGROUND).all():
            image[y:y + 4, x:x + 4] = (30, 170, 50)
            return image, 0.1
    raise AssertionError("no free corner")


def test_ground_truth_images_comply_fully_and_blank_ones_not_at_all():
    asked = prompts(PROMPT_SEED, 12)
    results = run_compliance(per_image(_ground_truth_for_cfg_blank_otherwise), [CFG, DNS], asked, batch=5)
    cfg, dns = results
    assert all(cfg.rates[m].value == 1.0 for m in compliance.METRICS)
    assert all(dns.rates[m].value == 0.0 for m in compliance.METRICS)
    assert dns.vs_cfg["correct"].value == -1.0 and cfg.vs_cfg["correct"].value == 0.0
    assert cfg.seconds_per_image == pytest.approx(0.5) and dns.seconds_per_image == pytest.approx(0.25)


def test_an_extra_object_fails_count_and_correct_only():
    asked = prompts(PROMPT_SEED, 16)
    (result,) = run_compliance(per_image(_with_extra_object), [CFG], asked, batch=16)
    assert result.rates["count"].value == 0.0 and result.rates["correct"].value == 0.0
    assert result.rates["colour"].value >= 0.95 and result.rates["side"].value >= 0.95


def test_mirrored_images_fail_on_side():
    asked = prompts(PROMPT_SEED, 24)
    (result,) = run_compliance(per_image(_mirrored), [CFG], asked)
    # Only prompts whose two objects share a colour can pass when left and right swap.
    same_colour = np.mean([a.colour == b.colour for a, b in asked])
    assert result.rates["side"].value == pytest.approx(same_colour) and same_colour < 0.5
    assert result.rates["all"].value <= same_colour


def test_first_method_must_be_cfg():
    with pytest.raises(UserInputError, match="first method must be plain cfg"):
        run_compliance(per_image(_truth), [DNS], prompts(PROMPT_SEED, 2))


def test_families_ask_what_their_names_say():
    for i in range(20):
        assert len(family_example("single", 1, i).objects) == 1
        left, right = family_example("same-colour", 1, i).objects
        assert left.colour == right.colour
        left, right = family_example("same-shape", 1, i).objects
        assert left.shape == right.shape
        assert family_example("pair", 1, i).caption == make_example(1, i, two_objects=True).caption
        for family, count in (("against-bias", 2), ("single-against-bias", 1)):
            objects = family_example(family, 1, i).objects
            assert len(objects) == count
            for obj in objects:
                assert obj.shape in BIASED_COLOUR and obj.colour != BIASED_COLOUR[obj.shape]
                assert goes_against_bias(obj)
    with pytest.raises(ValueError, match="unknown prompt family"):
        family_example("triples", 1, 0)
        with_bias = family_example("with-bias", 1, i).objects
        assert len(with_bias) == 2 and bias_negative(with_bias) is None
        assert [o.shape for o in with_bias] == [o.shape for o in family_example("pair", 1, i).objects]
    assert set(FAMILIES) == {"single", "pair", "same-colour", "same-shape", "against-bias", "single-against-bias",
                             "with-bias"}
    # against-bias keeps the prompts it had before single-against-bias joined (results stay comparable)
    assert family_example("against-bias", 1000, 0).caption == "a green triangle and a green triangle"


def test_bias_negative_names_the_biased_counterpart_of_what_goes_against_the_bias():
    def objects(*pairs):
        return tuple(ShapeObject(colour, shape, 8.0 + 16 * k, 16.0, 10.0) for k, (colour, shape) in enumerate(pairs))

    assert bias_negative(objects(("blue", "triangle"))) == "a red triangle"
    assert bias_negative(objects(("green", "triangle"), ("red", "square"))) == "a red triangle and a blue square"
    assert bias_negative(objects(("yellow", "circle"), ("green", "square"))) == "a blue square"
    assert bias_negative(objects(("red", "triangle"), ("yellow", "circle"))) is None  # nothing against the bias
    assert bias_shape_negative(objects(("blue", "triangle"))) == "a blue square"
    assert bias_shape_negative(objects(("red", "square"), ("green", "triangle"))) == "a red triangle"
    assert bias_shape_negative(objects(("green", "triangle"))) is None  # green is no shape's biased colour
    assert bias_shape_negative(objects(("blue", "square"), ("blue", "circle"))) is None
    spec = MethodSpec("cfg", negative="bias")
    assert spec.label == "cfg negative=bias" and "negative" not in spec.guidance_kwargs()
    assert MethodSpec("cfg", negative="bias-shape").negative_prompt(objects(("blue", "triangle"))) == "a blue square"
    assert spec.guidance(5.0).method == "cfg"
    assert spec.negative_prompt(objects(("blue", "triangle"))) == "a red triangle"
    assert CFG.negative_prompt(objects(("blue", "triangle"))) is None
    assert spec in CANDIDATES


def test_run_compliance_hands_each_method_its_negative_prompts():
    asked = [family_example("single-against-bias", 3, i).objects for i in range(4)]
    seen = {}

    def draw(captions, negatives, spec, seeds, w):
        seen.setdefault(spec.label, []).extend(negatives)
        return [render(asked[s], 32) for s in seeds], 0.1

    run_compliance(draw, [CFG, MethodSpec("cfg", negative="bias")], asked, batch=3)
    assert seen["cfg"] == [None] * 4
    assert seen["cfg negative=bias"] == [bias_negative(a) for a in asked]
    assert all(n and n.startswith("a ") for n in seen["cfg negative=bias"])


def test_biased_training_set_follows_the_bias_and_the_plain_one_does_not_change():
    objects = [o for i in range(2000) for o in make_example(0, i, biased=True).objects]
    for shape, colour in BIASED_COLOUR.items():
        of_shape = [o for o in objects if o.shape == shape]
        assert 0.85 <= np.mean([o.colour == colour for o in of_shape]) <= 0.97
        assert {o.colour for o in of_shape} == set(COLOURS)  # the other colours still occur
    plain = [make_example(0, i) for i in range(50)]
    assert [e.caption for e in plain] == [make_example(0, i, biased=False).caption for i in range(50)]
    red_triangles = np.mean([o.colour == "red" for i in range(2000) for o in make_example(0, i).objects
                             if o.shape == "triangle"])
    assert red_triangles < 0.35


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    small, large = (rng.integers(0, 2, size=(n, 1)).astype(float) for n in (40, 4000))
    (s,), (b,) = bootstrap_mean(small), bootstrap_mean(large)
    assert s.low <= s.value <= s.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (s.high - s.low) / 5
    (constant,) = bootstrap_mean(np.ones((10, 1)))
    assert (constant.low, constant.value, constant.high) == (1.0, 1.0, 1.0)


def test_candidates_cover_the_variants_and_labels_are_unique():
    labels = [spec.label for spec in CANDIDATES]
    assert labels[0] == "cfg" and len(set(labels)) == len(labels)
    answer = [s for s in CANDIDATES if s.method == "answer"]
    assert any(s.chain_min_sigma for s in answer) and any(s.drift_tau for s in answer)
    assert any(s.guidance_rescale for s in answer) and {s.negative_scale for s in answer} >= {1.0, 2.0, 4.0}
    assert all(s.dns_steps >= 2 for s in answer)  # K = 1 is CFG
    assert MethodSpec("answer", 4, chain_min_sigma=0.5).label == "answer K=4 parallel min-sigma=0.5"


def test_command_line_writes_json_and_refuses_unknown_methods(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "c.json"
    args = ["--model", "tiny-random", "--prompts", "3", "--steps", "2", "--methods", "answer-K=2-inner",
            "--families", "single,same-shape", "--guidance-scales", "3,7.5", "--batch", "2", "--json", str(out)]
    assert compliance.main(args) == 0
    report = json.loads(out.read_text())
    assert [(c["family"], c["guidance_scale"]) for c in report["cells"]] == [
        ("single", 3.0), ("single", 7.5), ("same-shape", 3.0), ("same-shape", 7.5)]
    cell = report["cells"][0]
    assert [m["label"] for m in cell["methods"]] == ["cfg", "answer K=2 inner"]
    assert report["checker_on_ground_truth"]["single"]["objects"] == 3 and report["prompts_per_family"] == 3
    assert set(cell["methods"][1]["rates"]) == set(compliance.METRICS)
    assert report["command"].startswith("python -m answer_trt.synthetic.compliance --model tiny-random")
    assert "correct - CFG" in capsys.readouterr().out
    assert compliance.main(["--model", "tiny-random", "--methods", "answer-K=3-inner"]) == 2
    assert "unknown method(s) answer-K=3-inner" in capsys.readouterr().err
    assert compliance.main(["--prompts", "1"]) == 2
    assert compliance.main(["--families", "triples"]) == 2
    assert "unknown --families triples" in capsys.readouterr().err
    assert compliance.main(["--guidance-scales", "3,x"]) == 2
    assert compliance.main(["--model", "tiny-random", "--prompts", "3", "--device", "cuda"]) == 2
    assert "--device cuda runs --backend torch only" in capsys.readouterr().err


def test_batched_draw_equals_pipeline_generate(tiny_model_dir):
    """The benchmark's batched draw is the computation of Pipeline.generate per prompt and seed."""
    from answer_trt.loaders import build_cached, from_engines

    pipe = from_engines(build_cached("tiny-random", batch=4), verify=False)
    draw = compliance.pipeline_draw(pipe, 3)
    captions = [family_example("pair", 1, i).caption for i in range(3)]
    spec = MethodSpec("answer", 2, chain_min_sigma=0.5)
    images, seconds = draw(captions, [None] * 3, spec, [5, 6, 7], 5.0)
    assert seconds > 0
    for caption, seed, image in zip(captions, [5, 6, 7], images):
        g = spec.guidance(5.0)
        assert g.wn == 5.0  # a spec without wn means wn = w, whatever the API's default
        alone = pipe.generate(caption, steps=3, seed=seed, guidance_scale=5.0, negative_scale=g.negative_scale,
                              dns_steps=g.dns_steps, chain_min_sigma=g.chain_min_sigma,
                              guidance_min_sigma=g.guidance_min_sigma)  # a spec's 0: guided at every step
        assert np.abs(np.asarray(alone.images[0]).astype(int) - image.astype(int)).max() <= 1
    # with a negative prompt: the computation of generate(negative_prompt=...)
    negative = MethodSpec("cfg", negative="bias")
    (image,), _ = draw(captions[:1], ["a red triangle"], negative, [5], 5.0)
    alone = pipe.generate(captions[0], negative_prompt="a red triangle", steps=3, seed=5, guidance_scale=5.0,
                          method="cfg")
    assert np.abs(np.asarray(alone.images[0]).astype(int) - image.astype(int)).max() <= 1
    (plain,), _ = draw(captions[:1], [None], CFG, [5], 5.0)
    assert np.abs(plain.astype(int) - image.astype(int)).max() > 1  # the negative prompt changed the picture


def test_tables_pool_families_weighted_by_prompts():
    from answer_trt.synthetic.tables import markdown, pooled_difference

    def method(label, value, delta, half):
        interval = {"value": value, "low": value, "high": value}
        return {"label": label, "rates": {"correct": interval},
                "vs_cfg": {"correct": {"value": delta, "low": delta - half, "high": delta + half}},
                "seconds_per_image": 1.0 if label == "cfg" else 1.5}

    cells = [
        {"family": "a", "guidance_scale": 7.5, "prompts": 100,
         "methods": [method("cfg", 0.8, 0.0, 0.0), method("x", 0.9, 0.1, 0.0392)]},
        {"family": "b", "guidance_scale": 7.5, "prompts": 300,
         "methods": [method("cfg", 0.4, 0.0, 0.0), method("x", 0.4, 0.0, 0.0392)]},
    ]
    rate, delta, se = pooled_difference([c["methods"][1] for c in cells], cells, "correct")
    assert rate == pytest.approx(0.525) and delta == pytest.approx(0.025)
    assert se == pytest.approx(((0.02 * 0.25) ** 2 + (0.02 * 0.75) ** 2) ** 0.5)  # width / 3.92 = 0.02
    text = markdown([{"cells": cells}])
    assert "| x | 0.900 (+0.100 [+0.061, +0.139]) | 0.400 (+0.000 [-0.039, +0.039]) | 0.525 (+0.025" in text
    assert text.rstrip().endswith("| 1.50x |")


def test_default_spec_is_what_generate_runs_without_guidance_flags():
    from answer_trt.config import DEFAULT_GUIDANCE

    spec = compliance.default_spec()
    guidance = spec.guidance(DEFAULT_GUIDANCE.guidance_scale)
    for name in spec.guidance_kwargs():
        if name not in ("negative_scale", "guidance_min_sigma"):  # None in the default: resolved from the method
            assert getattr(guidance, name) == getattr(DEFAULT_GUIDANCE, name), name
    assert guidance.wn == DEFAULT_GUIDANCE.wn and not spec.negative
    assert guidance.interval_min_sigma == DEFAULT_GUIDANCE.interval_min_sigma


def test_inpaint_family_asks_to_repaint_the_right_object_as_a_green_triangle():
    """Issue 33: the input holds two objects, the mask covers the right one (the right half),
    the target keeps the left object and makes the right one a green triangle; the checker
    reads the target as correct and the unchanged input as not."""
    from answer_trt.synthetic import checker
    from answer_trt.synthetic.compliance import run_inpaint_compliance
    from answer_trt.synthetic.inpaint_family import inpaint_example

    examples = [inpaint_example(PROMPT_SEED, i) for i in range(24)]
    for e in examples:
        left, right = e.before
        assert e.target[0] == left and (e.target[1].colour, e.target[1].shape) == ("green", "triangle")
        assert (right.colour, right.shape) != ("green", "triangle") and e.target[1].cx == right.cx
        assert e.caption == f"a {left.colour} {left.shape} and a green triangle"
        assert (e.mask[:, 16:] == 255).all() and (e.mask[:, :16] == 0).all()
        assert (e.image[:, 16:] != BACKGROUND).any(axis=-1).any()  # the right object lies under the mask
        assert (e.image[:, :16] == e.ground_truth().image[:, :16]).all()  # the left half is kept as it is
        assert all(s.colour and s.shape and s.side for s in checker.score(e.ground_truth().image, e.target))

    def draw(chunk, spec, seeds, w):  # CFG leaves the input as it is; the other draws the target
        return [e.image if spec.method == "cfg" else e.ground_truth().image for e in chunk], 0.1

    cfg, other = run_inpaint_compliance(draw, [CFG, DNS], examples, batch=5)
    assert cfg.rates["correct"].value == 0.0 and other.rates["correct"].value == 1.0
    assert other.vs_cfg["correct"].low == 1.0 and cfg.rates["left_levels"].value == 0.0
    with pytest.raises(UserInputError, match="first method"):
        run_inpaint_compliance(draw, [DNS], examples)


def test_inpaint_family_draw_is_pipeline_inpainting_and_runs_from_the_command_line(tmp_path, tiny_model_dir):
    from PIL import Image

    from answer_trt.loaders import build_cached, from_engines
    from answer_trt.synthetic.inpaint_family import inpaint_draw, inpaint_example

    pipe = from_engines(build_cached("tiny-random"), verify=False)
    example = inpaint_example(PROMPT_SEED, 0)
    spec = MethodSpec("answer", 2, chain_min_sigma=0.5)
    (image,), seconds = inpaint_draw(pipe, 3)([example], spec, [5], 5.0)
    g = spec.guidance(5.0)
    assert pipe.default_size == (64, 64)  # tiny-random: drawn at 64x64, scored at the examples' 32x32
    alone = pipe.generate(example.caption, image=Image.fromarray(example.image),
                          mask_image=Image.fromarray(example.mask), strength=1.0, steps=3, seed=5, height=64, width=64,
                          guidance_scale=5.0, negative_scale=g.negative_scale, dns_steps=2, chain_min_sigma=0.5,
                          guidance_min_sigma=g.guidance_min_sigma)
    back = alone.images[0].resize((32, 32), Image.Resampling.NEAREST)
    assert seconds > 0 and image.shape == (32, 32, 3) and np.array_equal(np.asarray(back), image)
    out = tmp_path / "inpaint.json"
    assert compliance.main(["--model", "tiny-random", "--prompts", "3", "--steps", "2", "--families", "inpaint",
                            "--methods", "answer-K=2-inner", "--batch", "2", "--json", str(out)]) == 0
    cell = json.loads(out.read_text())["cells"][0]
    assert cell["family"] == "inpaint" and [m["label"] for m in cell["methods"]] == ["cfg", "answer K=2 inner"]
    assert "left_levels" in cell["methods"][1]["rates"]
