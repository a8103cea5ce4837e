"""Pure guidance functions: the closed-form identities of ANSWER.md."""

from __future__ import annotations

import pytest
import torch

from answer_trt import guidance as G


def tensors(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 5, 5, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("w,wn", [(7.5, 7.5), (3.0, 0.5), (12.0, 2.0)])
def test_answer_is_cfg_in_clean_image_space_anchored_at_the_negative(w, wn):
    x, ep, xneg0 = tensors(3)
    alpha, sigma = 0.3, (1 - 0.09) ** 0.5
    g = G.answer_scale(w, wn)
    e_ans = G.answer(G.negative_noise(x, xneg0, alpha, sigma), ep, g)
    lhs = G.tweedie_x0(x, e_ans, alpha, sigma)
    rhs = xneg0 + g * (G.tweedie_x0(x, ep, alpha, sigma) - xneg0)
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_dns_is_cfg_with_branches_swapped_at_one_plus_wn():
    e0, ep = tensors(2)
    torch.testing.assert_close(G.dns(e0, ep, 3.0), G.cfg(ep, e0, 4.0))


def test_answer_without_moved_negative_is_cfg():
    """z == x: e_neg = e_dns(x), and the normalized scale gives CFG(w) for any wn."""
    x, ep, e0 = tensors(3, seed=1)
    alpha, sigma = 0.8, 0.6
    for wn in (0.0, 1.0, 9.0):
        xneg0 = G.tweedie_x0(x, G.dns(e0, ep, wn), alpha, sigma)
        e_ans = G.answer(G.negative_noise(x, xneg0, alpha, sigma), ep, G.answer_scale(7.5, wn))
        torch.testing.assert_close(e_ans, G.cfg(e0, ep, 7.5), rtol=1e-4, atol=1e-4)


def test_guidance_runs_in_float32_for_half_inputs():
    e0, ep = (t.half() for t in tensors(2))
    assert G.cfg(e0, ep, 7.5).dtype == torch.float32
    assert G.negative_noise(e0, ep, 0.99, 0.01).dtype == torch.float32


def test_negative_noise_from_dns_equals_eqs_3_and_4():
    x, z, e_dns = tensors(3, seed=2)
    alpha, sigma = 0.7, (1 - 0.49) ** 0.5
    via_xneg0 = G.negative_noise(x, G.tweedie_x0(z, e_dns, alpha, sigma), alpha, sigma)
    torch.testing.assert_close(G.negative_noise_from_dns(x, z, e_dns, sigma), via_xneg0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(G.negative_noise_from_dns(x, x, e_dns, sigma), e_dns)
