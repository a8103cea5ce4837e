"""Guidance arithmetic of ANSWER.md as pure float32 tensor functions.

Notation follows ANSWER.md: ``ep = eps(x, t, c_p)``, ``e0 = eps(x, t, c_0)``,
``alpha_t = sqrt(alphabar_t)``, ``sigma_t = sqrt(1 - alphabar_t)``.
Every function upcasts to float32 first: ``e_neg`` divides by ``sigma_t``, which
is tiny at the end of sampling, and fp16 would lose the result there.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32)


def cfg(e0: Tensor, ep: Tensor, w: float) -> Tensor:
    """Eq. 1: ``e_cfg = e0 + w * (ep - e0)``."""
    e0 = _f32(e0)
    return e0 + w * (_f32(ep) - e0)


def dns(e0: Tensor, ep: Tensor, wn: float) -> Tensor:
    """Eq. 2: ``e_dns = e0 + wn * (e0 - ep)``, CFG with the branches swapped."""
    e0 = _f32(e0)
    return e0 + wn * (e0 - _f32(ep))


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
    """Eq. 5: ``e_ans = e_neg + g * (ep - e_neg)``."""
    e_neg = _f32(e_neg)
    return e_neg + g * (_f32(ep) - e_neg)


def to_epsilon(output: Tensor, x_in: Tensor, alpha: float, sigma: float, prediction_type: str) -> Tensor:
    """Convert a UNet output to a noise prediction (float32).

    For v-prediction ``v = alpha_t * eps - sigma_t * x0`` and ``x = alpha_t * x0 + sigma_t * eps``
    give ``eps = alpha_t * v + sigma_t * x``; guidance is then done on eps as everywhere else.
    """
    if prediction_type == "epsilon":
        return _f32(output)
    if prediction_type == "v_prediction":
        return alpha * _f32(output) + sigma * _f32(x_in)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
