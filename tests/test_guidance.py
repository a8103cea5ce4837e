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


def test_parallel_answer_equals_eqs_3_to_5():
    """e_neg = e_dns(z) + (x - z) / sigma_t is Eq. 4 with xneg0 = x0(z, e_dns(z)) (Eq. 3)."""
    x, z, ep, ep_z, e0_z = tensors(5, seed=2)
    alpha, sigma, w, wn = 0.7, (1 - 0.49) ** 0.5, 7.5, 3.0
    g = G.answer_scale(w, wn)
    e, e_dns = G.parallel_answer(ep, ep_z, e0_z, x, z, alpha, sigma, g, wn)
    torch.testing.assert_close(e_dns, G.dns(e0_z, ep_z, wn))
    xneg0 = G.tweedie_x0(z, e_dns, alpha, sigma)
    torch.testing.assert_close(e, G.answer(G.negative_noise(x, xneg0, alpha, sigma), ep, g), rtol=1e-4, atol=1e-4)
    anchored, _ = G.parallel_answer(ep, ep, e0_z, x, x, alpha, sigma, g, wn)
    torch.testing.assert_close(anchored, G.cfg(e0_z, ep, w), rtol=1e-4, atol=1e-4)


def test_parallel_answer_takes_tensor_levels_as_the_graphed_step_does():
    x, z, ep, ep_z, e0_z = tensors(5, seed=4)
    floats = G.parallel_answer(ep, ep_z, e0_z, x, z, 0.6, 0.8, 2.0, 1.5, 0.3, 0.7)
    tensors_ = G.parallel_answer(ep, ep_z, e0_z, x, z, torch.tensor(0.6), torch.tensor(0.8), 2.0, 1.5, 0.3, 0.7)
    for a, b in zip(floats, tensors_):
        torch.testing.assert_close(a, b)


def test_drift_weight_fades_with_noise_level():
    assert G.drift_weight(0.6, 0.8, None) == 1.0
    tau = 0.5
    high = G.drift_weight(0.1, 0.995, tau)
    low = G.drift_weight(0.995, 0.1, tau)
    assert high > 0.95 and low < 0.05
    assert G.drift_weight(0.6, 0.8, tau) == pytest.approx(0.64 / (0.64 + 0.36 * 0.25))


def test_fade_shrinks_only_the_drift_term():
    x, z, ep, ep_z, e0_z = tensors(5, seed=5)
    alpha, sigma, g, wn = 0.9, (1 - 0.81) ** 0.5, 2.0, 1.0
    plain, e_dns = G.parallel_answer(ep, ep_z, e0_z, x, z, alpha, sigma, g, wn)
    faded, _ = G.parallel_answer(ep, ep_z, e0_z, x, z, alpha, sigma, g, wn, tau=1.0)
    rho = G.drift_weight(alpha, sigma, 1.0)
    # e_ans is affine in e_neg with slope (1 - g): the drift term scales by rho.
    torch.testing.assert_close(faded - G.answer(e_dns, ep, g), rho * (plain - G.answer(e_dns, ep, g)),
                               rtol=1e-4, atol=1e-4)


def test_rescale_matches_the_positive_deviation_per_image():
    e, ep = tensors(2, seed=6)
    e = 5.0 * e
    out = G.rescale(e, ep, 1.0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), ep.std(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G.rescale(e, ep, 0.5), 0.5 * out + 0.5 * e, rtol=1e-5, atol=1e-5)
    assert G.rescale(e, ep, 0.0) is e
