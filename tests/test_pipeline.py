"""End to end on the ONNX Runtime engines of the tiny model: ANSWER.md's identities
through the real text encoder, UNet, scheduler and decoder."""

from __future__ import annotations

import logging

import numpy as np
import pytest

STEPS = 6


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def max_level_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


METHODS = [
    dict(method="cfg"),
    dict(method="cfg", negative_prompt="a blue house"),
    dict(method="dns"),
    dict(method="answer", mode="parallel", dns_steps=2),
    dict(method="answer", mode="inner", dns_steps=2),
]


@pytest.mark.parametrize("kw", METHODS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_fused_equals_unfused(ort_pipe, kw):
    fused = ort_pipe("a cat and a dog", steps=STEPS, seed=1, **kw)
    unfused = ort_pipe("a cat and a dog", steps=STEPS, seed=1, fused=False, **kw)
    assert max_level_diff(fused, unfused) <= 1


@pytest.mark.parametrize("mode", ["parallel", "inner"])
@pytest.mark.parametrize("wn", [1.0, 7.5, 15.0])
def test_answer_k1_equals_cfg(ort_pipe, mode, wn):
    from answer_trt.config import ANSWER_GUIDANCE_MIN_SIGMA

    # At the same guidance interval (ANSWER's default one; CFG's own default is none).
    cfg = ort_pipe("a red car", method="cfg", steps=STEPS, seed=2, guidance_scale=6.0,
                   guidance_min_sigma=ANSWER_GUIDANCE_MIN_SIGMA)
    ans = ort_pipe("a red car", method="answer", mode=mode, dns_steps=1, negative_scale=wn, steps=STEPS,
                   seed=2, guidance_scale=6.0)
    assert max_level_diff(cfg, ans) <= 1


@pytest.mark.parametrize("mode", ["parallel", "inner"])
def test_answer_k_above_one_differs_from_cfg(ort_pipe, mode):
    cfg = ort_pipe("a red car", method="cfg", steps=STEPS, seed=2)
    ans = ort_pipe("a red car", method="answer", mode=mode, dns_steps=3, steps=STEPS, seed=2)
    assert max_level_diff(cfg, ans) > 3


def test_dns_equals_cfg_with_prompts_swapped(ort_pipe):
    wn = 3.0
    dns = ort_pipe("a green tree", method="dns", negative_scale=wn, steps=STEPS, seed=4)
    # c_p and c_0 swapped: the prompt becomes the negative, the empty prompt the positive.
    swapped = ort_pipe("", method="cfg", negative_prompt="a green tree", guidance_scale=1 + wn, steps=STEPS, seed=4)
    assert max_level_diff(dns, swapped) <= 1


def test_deterministic_for_a_seed(ort_pipe):
    a = ort_pipe("a bird", steps=STEPS, seed=7)
    b = ort_pipe("a bird", steps=STEPS, seed=7)
    c = ort_pipe("a bird", steps=STEPS, seed=8)
    assert np.array_equal(pixels(a), pixels(b))
    assert max_level_diff(a, c) > 3


def test_batch_images_differ_and_first_matches_batch_of_one(ort_pipe):
    pair = ort_pipe("a bird", steps=STEPS, seed=7, batch=2)
    assert len(pair) == 2 and max_level_diff(pair[:1], pair[1:]) > 3
    one = ort_pipe("a bird", steps=STEPS, seed=7)  # the seed's noise starts with the first image's
    assert max_level_diff(pair[:1], one) <= 1


@pytest.mark.parametrize("kw", [dict(method="answer", dns_steps=2), dict(method="cfg")], ids=["answer", "cfg"])
def test_graphed_generate_captures_once_and_reuses_its_graphs(engines_dir, kw):
    """The pipeline owns one graph cache: the second generate of a shape captures nothing
    (eager capturer on the CPU), and every graphed image equals the eager one."""
    import answer_trt
    from answer_trt.graphed import EagerCapturer, GraphCache

    pipe = answer_trt.load(engines_dir)
    pipe.graphs = GraphCache(EagerCapturer())
    first = pipe("a bird", steps=STEPS, seed=3, cuda_graph=True, **kw)
    captures = pipe.graphs.captures
    assert captures == (3 if kw["method"] == "answer" else 1)  # ANSWER: anchor, chain and unguided steps
    again = pipe("a bird", steps=STEPS, seed=3, cuda_graph=True, **kw)
    other = pipe("a cat", steps=STEPS, seed=4, cuda_graph=True, **kw)  # new conditions, same buffers
    assert pipe.graphs.captures == captures
    assert np.array_equal(pixels(first), pixels(again))
    assert max_level_diff(first, pipe("a bird", steps=STEPS, seed=3, **kw)) <= 1
    assert max_level_diff(other, pipe("a cat", steps=STEPS, seed=4, **kw)) <= 1


def test_onnxruntime_pipeline_matches_torch_pipeline(ort_pipe, torch_pipe):
    for method in ("answer", "cfg"):
        a = ort_pipe("a photo of a house", method=method, steps=STEPS, seed=5)
        b = torch_pipe("a photo of a house", method=method, steps=STEPS, seed=5)
        assert max_level_diff(a, b) <= 1


def test_scheduler_override_is_used(ort_pipe):
    default = ort_pipe.generate("a cat", steps=STEPS, seed=1)
    euler = ort_pipe.generate("a cat", steps=STEPS, seed=1, scheduler="euler")
    assert default.params["scheduler_class"] == "DDIMScheduler"  # the tiny model's own
    assert euler.params["scheduler_class"] == "EulerDiscreteScheduler"
    assert (default.params["scheduler"], euler.params["scheduler"]) == ("", "euler")  # what was asked for


def test_parameters_are_attached_to_images(ort_pipe):
    result = ort_pipe.generate("a cat", steps=3, seed=11, method="dns", negative_scale=2.0)
    info = result.images[0].info
    assert info["prompt"] == "a cat" and info["seed"] == "11" and info["method"] == "dns"
    assert info["negative_scale"] == "2.0" and info["steps"] == "3" and info["model"] == "tiny-random"
    assert result.timings.denoise_s > 0 and result.timings.steps == 3


def test_long_prompt_is_truncated_with_a_warning(ort_pipe, caplog):
    long_prompt = " ".join(["cat"] * 100)
    with caplog.at_level(logging.WARNING, logger="answer_trt"):
        images = ort_pipe(long_prompt, steps=2, seed=0)
    assert len(images) == 1
    assert any("truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), r"0 to 2\*\*64 - 1"),
    (dict(seed=2**64), r"0 to 2\*\*64 - 1"),
    (dict(height=8192, width=8192), "4096 px"),
    (dict(batch=10**6), "at most 256 images"),
    (dict(batch=250, height=2048, width=2048), "estimate"),
])
def test_api_refuses_bad_request_values(torch_pipe, kwargs, message):
    """The API checks what the CLI checks, before anything is allocated (the torch
    pipeline has no engine profile to stop a huge batch)."""
    from answer_trt.errors import UserInputError

    with pytest.raises(UserInputError, match=message):
        torch_pipe.generate("a cat", steps=1, **kwargs)


def test_limits_refuse_a_batch_below_one():
    from answer_trt.errors import UserInputError
    from answer_trt.pipeline import Limits

    with pytest.raises(UserInputError, match="max_batch"):
        Limits(max_batch=-5)
