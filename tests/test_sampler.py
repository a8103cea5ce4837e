"""The sampler's identities (ANSWER.md) on a small nonlinear toy denoiser."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from answer_trt import guidance as G
from answer_trt.config import GuidanceConfig
from answer_trt.sampler import Conditioning, sample
from tests.toys import ToyDenoiser, make_scheduler

# The identities and call counts here are those of guidance at every step (conftest.py).
pytestmark = pytest.mark.usefixtures("guided_at_every_step")


def run(problem, guidance: GuidanceConfig, kind: str = "ddim", fused: bool = True, steps: int = 8, **kw):
    noise, cond = problem
    return sample(ToyDenoiser(), noise, cond, make_scheduler(kind), steps, guidance, fused=fused, **kw)


ALL_METHODS = [
    GuidanceConfig(method="cfg"),
    GuidanceConfig(method="dns", negative_scale=3.0),
    GuidanceConfig(method="answer", dns_steps=3, mode="parallel"),
    GuidanceConfig(method="answer", dns_steps=3, mode="inner"),
    GuidanceConfig(method="answer", dns_steps=3, chain_min_sigma=0.5, drift_tau=0.3, guidance_rescale=0.7),
    GuidanceConfig(method="answer", dns_steps=3, mode="inner", chain_min_sigma=0.5, guidance_rescale=0.7),
]

VARIANTS = [
    dict(chain_min_sigma=0.5),
    dict(drift_tau=0.3),
    dict(guidance_rescale=0.7),
    dict(negative_scale=2.0),
]


@pytest.mark.parametrize("kind", ["ddim", "euler"])
@pytest.mark.parametrize("guidance", ALL_METHODS, ids=lambda g: f"{g.method}-{g.mode}")
def test_fused_equals_unfused(problem, guidance, kind):
    fused = run(problem, guidance, kind, fused=True)
    unfused = run(problem, guidance, kind, fused=False)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddim", "euler"])
@pytest.mark.parametrize("mode", ["parallel", "inner"])
@pytest.mark.parametrize("wn", [0.5, 7.5, 20.0])
def test_answer_k1_equals_cfg_for_any_negative_scale(problem, kind, mode, wn):
    cfg = run(problem, GuidanceConfig(method="cfg", guidance_scale=5.0), kind)
    ans = run(problem, GuidanceConfig(method="answer", guidance_scale=5.0, negative_scale=wn, dns_steps=1, mode=mode),
              kind)
    torch.testing.assert_close(ans, cfg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: next(iter(v)))
def test_every_variant_with_k1_equals_cfg(problem, variant):
    """K = 1 is CFG for every variant (with rescale: CFG with the same rescale)."""
    rescale = variant.get("guidance_rescale", 0.0)
    cfg = run(problem, GuidanceConfig(method="cfg", guidance_scale=5.0, guidance_rescale=rescale))
    modes = ["parallel"] if "drift_tau" in variant else ["parallel", "inner"]
    for mode in modes:
        ans = run(problem, GuidanceConfig(method="answer", guidance_scale=5.0, dns_steps=1, mode=mode, **variant))
        torch.testing.assert_close(ans, cfg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: next(iter(v)))
def test_every_variant_changes_answer_at_k_above_one(problem, variant):
    first = GuidanceConfig(method="answer", guidance_scale=5.0, negative_scale=5.0, dns_steps=4, chain_min_sigma=0.0)
    plain = run(problem, first)  # the first reconstruction: no variant at all
    varied = run(problem, replace(first, **variant))
    assert (plain - varied).abs().max() > 1e-3


def test_chain_min_sigma_above_every_level_is_cfg(problem):
    """Re-anchoring at every step (all sigma_t below the threshold) is exactly CFG."""
    cfg = run(problem, GuidanceConfig(method="cfg", guidance_scale=5.0))
    for mode in ("parallel", "inner"):
        ans = run(problem, GuidanceConfig(guidance_scale=5.0, dns_steps=4, mode=mode, chain_min_sigma=0.9999))
        torch.testing.assert_close(ans, cfg, rtol=1e-4, atol=1e-4)


def test_anchored_steps_every_k_and_below_the_threshold():
    from answer_trt.guiders import anchored_steps

    sigmas = [0.99, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2]
    assert anchored_steps(sigmas, 3) == [True, False, False, True, False, False, True, False]
    assert anchored_steps(sigmas, 3, 0.5) == [True, False, False, True, False, True, True, True]


def test_probe_sees_every_step_and_the_anchors(problem):
    seen = []
    run(problem, GuidanceConfig(dns_steps=2, chain_min_sigma=0.5), probe=seen.append)
    assert [s["i"] for s in seen] == list(range(8))
    assert all({"x", "ep", "e", "e_neg", "z_in", "sigma"} <= set(s) for s in seen)
    for s in seen:
        assert s["anchored"] == (s["i"] % 2 == 0 or s["sigma"] < 0.5)
        if s["anchored"]:
            torch.testing.assert_close(s["z_in"], s["x_in"])


def test_parallel_call_sizes_follow_the_interval(problem):
    noise, cond = problem
    sizes = []
    toy = ToyDenoiser()

    def recording(latents, t, c):
        sizes.append(latents.shape[0] // noise.shape[0])
        return toy(latents, t, c)

    sample(recording, noise, cond, make_scheduler("ddim"), 8, GuidanceConfig(dns_steps=4, chain_min_sigma=0.5))
    from answer_trt.schedulers import make_step_rule
    sigmas = [make_step_rule(make_scheduler("ddim"), 8).levels(i)[1] for i in range(8)]
    assert sizes == [2 if (i % 4 == 0 or s < 0.5) else 3 for i, s in enumerate(sigmas)]
    assert any(s < 0.5 and i % 4 for i, s in enumerate(sigmas))  # the threshold, not K alone, decides some


@pytest.mark.parametrize("mode", ["parallel", "inner"])
def test_answer_k_above_one_differs_from_cfg(problem, mode):
    cfg = run(problem, GuidanceConfig(method="cfg", guidance_scale=5.0))
    ans = run(problem, GuidanceConfig(method="answer", guidance_scale=5.0, dns_steps=4, mode=mode))
    assert (ans - cfg).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_dns_equals_cfg_with_prompts_swapped(problem, kind):
    noise, cond = problem
    wn = 4.0
    dns = run(problem, GuidanceConfig(method="dns", negative_scale=wn), kind)
    swapped = Conditioning(positive=cond.negative, negative=cond.positive)
    cfg = run((noise, swapped), GuidanceConfig(method="cfg", guidance_scale=1.0 + wn), kind)
    torch.testing.assert_close(dns, cfg, rtol=1e-5, atol=1e-5)


def test_call_counts_match_the_cost_model(problem):
    """Parallel: one call per step. Inner: up to K calls per step (2K evaluations)."""
    noise, cond = problem
    toy = ToyDenoiser()
    counts = {}
    for mode in ("parallel", "inner"):
        calls = []

        def counting(latents, t, c, calls=calls):
            calls.append(latents.shape[0])
            return toy(latents, t, c)

        sample(counting, noise, cond, make_scheduler("ddim"), 6, GuidanceConfig(method="answer", dns_steps=3, mode=mode,
                                                                               chain_min_sigma=0.0))
        counts[mode] = len(calls)
    assert counts["parallel"] == 6
    # steps 0..3 run 3 iterations, step 4 runs 2, step 5 runs 1.
    assert counts["inner"] == 3 * 4 + 2 + 1


def test_parallel_batch_sizes_per_step(problem):
    """Re-anchor steps send 2 branches, the others 3 (ANSWER.md)."""
    noise, cond = problem
    sizes = []
    toy = ToyDenoiser()

    def recording(latents, t, c):
        sizes.append(latents.shape[0])
        return toy(latents, t, c)

    sample(recording, noise, cond, make_scheduler("ddim"), 5, GuidanceConfig(dns_steps=2, chain_min_sigma=0.0))
    b = noise.shape[0]
    assert sizes == [2 * b, 3 * b, 2 * b, 3 * b, 2 * b]


def test_v_prediction_is_converted_to_epsilon():
    gen = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    alpha, sigma = 0.6, 0.8
    x = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    torch.testing.assert_close(G.to_epsilon(v, x, alpha, sigma, "v_prediction"), eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_linear_step_rule_matches_diffusers_step(kind):
    """The precomputed pure-tensor update equals diffusers' own step() over a trajectory."""
    from answer_trt.schedulers import DiffusersStepRule, LinearStepRule, make_step_rule

    fast = make_step_rule(make_scheduler(kind), 12)
    exact = make_step_rule(make_scheduler(kind), 12, exact_diffusers=True)
    assert isinstance(fast, LinearStepRule) and isinstance(exact, DiffusersStepRule)
    assert fast.init_noise_sigma == pytest.approx(exact.init_noise_sigma)
    gen = torch.Generator().manual_seed(5)
    x_fast = x_exact = torch.randn(1, 4, 5, 5, generator=gen) * fast.init_noise_sigma
    for i in range(len(fast.timesteps)):
        assert fast.levels(i) == pytest.approx(exact.levels(i), rel=1e-5)
        torch.testing.assert_close(fast.scale_input(x_fast, i), exact.scale_input(x_exact, i), rtol=1e-5, atol=1e-5)
        eps = torch.randn(1, 4, 5, 5, generator=gen)
        x_fast, x_exact = fast.step(eps, i, x_fast), exact.step(eps, i, x_exact)
        torch.testing.assert_close(x_fast, x_exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddim", "euler"])
@pytest.mark.parametrize("mode", ["parallel", "inner"])
def test_sampler_with_linear_rule_equals_diffusers_step(problem, kind, mode):
    guidance = GuidanceConfig(method="answer", dns_steps=3, mode=mode)
    fast = run(problem, guidance, kind)
    exact = run(problem, guidance, kind, exact_diffusers_step=True)
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-4)


def test_too_many_steps_is_a_user_error():
    from answer_trt.errors import UserInputError
    from answer_trt.schedulers import make_step_rule

    make_step_rule(make_scheduler("ddim"), 999)
    with pytest.raises(UserInputError, match="--steps 1000 is too many"):
        make_step_rule(make_scheduler("ddim"), 1000)
