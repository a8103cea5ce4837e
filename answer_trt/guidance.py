"""Guidance arithmetic of docs/ANSWER.md as pure float32 tensor functions.

Equation numbers are those of docs/ANSWER.md. Notation: ``ep = eps(x, t, c_p)``, ``e0 = eps(x, t, c_0)``,
``alpha_t = sqrt(alphabar_t)``, ``sigma_t = sqrt(1 - alphabar_t)``.
Every function upcasts to float32 first: ``e_neg`` divides by ``sigma_t``, which
is tiny at the end of sampling, and fp16 would lose the result there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _f32(t: Tensor) -> Tensor:
    # The dtype test is ~30x cheaper than a no-op .to(): this runs several times a step.
    return t if t.dtype == torch.float32 else t.float()


def cfg(e0: Tensor, ep: Tensor, w: float) -> Tensor:
    """Eq. 1: ``e_cfg = e0 + w * (ep - e0)`` (one lerp)."""
    return torch.lerp(_f32(e0), _f32(ep), w)


def dns(e0: Tensor, ep: Tensor, wn: float) -> Tensor:
    """Eq. 2: ``e_dns = e0 + wn * (e0 - ep) = ep + (1 + wn) * (e0 - ep)``: CFG with the
    branches swapped and scale 1 + wn (one lerp)."""
    return torch.lerp(_f32(ep), _f32(e0), 1.0 + wn)


def tweedie_x0(x: Tensor, eps: Tensor, alpha: float, sigma: float) -> Tensor:
    """Tweedie clean estimate ``x0(x, e) = (x - sigma_t * e) / alpha_t``."""
    return (_f32(x) - sigma * _f32(eps)) / alpha


def negative_noise(x: Tensor, xneg0: Tensor, alpha: float, sigma: float) -> Tensor:
    """Eq. 4: ``e_neg = (x - alpha_t * xneg0) / sigma_t``, the noise carrying x to xneg0."""
    return (_f32(x) - alpha * _f32(xneg0)) / sigma


def answer_scale(w: float, wn: float) -> float:
    """Normalized ANSWER scale ``g = (w + wn) / (1 + wn)``; ANSWER equals CFG(w) when z == x."""
    return (w + wn) / (1.0 + wn)


def answer(e_neg: Tensor, ep: Tensor, g: float) -> Tensor:
    """Eq. 5: ``e_ans = e_neg + g * (ep - e_neg)`` (one lerp)."""
    return torch.lerp(_f32(e_neg), _f32(ep), g)


def drift_weight(alpha: Any, sigma: Any, tau: float | None) -> Any:
    """Variant "fade" (docs/ANSWER.md, Eq. 6): ``rho = sigma_t^2 / (sigma_t^2 + alpha_t^2 tau^2)``,
    the weight of the chain's drift term; 1 without ``tau``. Works on floats and on 0-d tensors."""
    if tau is None:
        return 1.0
    return sigma * sigma / (sigma * sigma + alpha * alpha * (tau * tau))


def rescale(e: Tensor, ep: Tensor, phi: float, offset: Any = 0.0) -> Tensor:
    """Variant "rescale" (docs/ANSWER.md, Eq. 7; Lin et al. 2024): scale the guided prediction
    to the per-image standard deviation of the positive one, then mix ``phi`` of it with
    ``1 - phi`` of the unscaled one. ``phi = 0`` returns ``e`` unchanged.

    As diffusers' ``rescale_noise_cfg``, on the model's own output (v for v-prediction, x0 for
    sample prediction), computed here on noise predictions: ``offset`` is the noise prediction
    of a zero model output at this step (``output_offset``), so ``e - offset`` is the output up
    to a constant factor, which the ratio of deviations cancels. 0 for epsilon prediction."""
    if phi == 0.0:
        return e
    dims = tuple(range(1, e.dim()))
    guided, positive = e - offset, _f32(ep) - offset
    ratio = positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return guided * (1.0 + phi * (ratio - 1.0)) + offset


def output_offset(x_in: Tensor, alpha: Any, sigma: Any, prediction_type: str) -> Any:
    """The noise prediction ``to_epsilon`` gives a zero model output at input ``x_in``:
    ``sigma_t * x`` for v-prediction, ``x / sigma_t`` for sample prediction, 0 for epsilon.
    A noise prediction minus it is ``alpha_t * v`` (v) or ``-alpha_t / sigma_t * x0`` (sample):
    the model's output up to a factor, where ``rescale`` works. ``alpha``, ``sigma``: floats
    or 0-d tensors."""
    if prediction_type == "epsilon":
        return 0.0
    if prediction_type == "v_prediction":
        return sigma * _f32(x_in)
    return _f32(x_in) / sigma


def parallel_negative(e_dns: Tensor, x_in: Tensor, z_in: Tensor, alpha: Any, sigma: Any,
                      tau: float | None = None) -> Tensor:
    """Eq. 4' with the fade of Eq. 6: ``e_neg = e_dns(z) + rho (x - z) / sigma_t``; at a
    re-anchor step (z is x) it is ``e_dns`` itself."""
    if z_in is x_in:
        return e_dns
    return e_dns + (_f32(x_in) - _f32(z_in)) * (drift_weight(alpha, sigma, tau) / sigma)


def parallel_answer(
    ep: Tensor, ep_z: Tensor, e0_z: Tensor, x_in: Tensor, z_in: Tensor, alpha: Any, sigma: Any,
    g: float, wn: float, tau: float | None = None, phi: float = 0.0, offset: Any = 0.0,
) -> tuple[Tensor, Tensor]:
    """One parallel-mode ANSWER step's guidance (docs/ANSWER.md, Eqs. 2, 4', 5 and the
    variants 6-7): returns ``(e_ans, e_dns)``; ``e_dns`` also advances the chain z.

    ``e_neg = e_dns(z) + rho * (x - z) / sigma_t``; at a re-anchor step z == x, so
    ``e_neg = e_dns`` and ``e_ans`` equals CFG(w) (the normalized scale ``g``). ``alpha``
    and ``sigma`` may be floats or 0-d tensors (the graphed sampler reads them from a table).
    ``offset``: x's ``output_offset`` (rescale on the model's output space).
    """
    e_dns = dns(e0_z, ep_z, wn)
    e_neg = parallel_negative(e_dns, x_in, z_in, alpha, sigma, tau)
    return rescale(answer(e_neg, ep, g), ep, phi, offset), e_dns


def to_epsilon(output: Tensor, x_in: Tensor, alpha: float, sigma: float, prediction_type: str) -> Tensor:
    """Convert a UNet output to a noise prediction (float32).

    For v-prediction ``v = alpha_t * eps - sigma_t * x0`` and ``x = alpha_t * x0 + sigma_t * eps``
    give ``eps = alpha_t * v + sigma_t * x``; guidance is then done on eps as everywhere else.
    For x0-prediction (diffusers' ``"sample"``) ``eps = (x - alpha_t * x0) / sigma_t``.
    """
    if prediction_type == "epsilon":
        return _f32(output)
    if prediction_type == "v_prediction":
        return alpha * _f32(output) + sigma * _f32(x_in)
    if prediction_type == "sample":
        return (_f32(x_in) - alpha * _f32(output)) / sigma
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: expected 'epsilon', 'v_prediction' or "
                     "'sample'")
