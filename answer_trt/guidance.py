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


def negative_noise_from_dns(x: Tensor, z: Tensor, e_dns: Tensor, sigma: float) -> Tensor:
    """Eqs. 3-4 in one step when z and x share the timestep (parallel mode):
    substituting ``xneg0 = (z - sigma_t * e_dns) / alpha_t`` into Eq. 4 gives
    ``e_neg = e_dns + (x - z) / sigma_t``; at a re-anchor step (z == x) it is e_dns itself."""
    return torch.add(_f32(e_dns), _f32(x) - _f32(z), alpha=1.0 / sigma)


def answer_scale(w: float, wn: float) -> float:
    """Normalized ANSWER scale ``g = (w + wn) / (1 + wn)``; ANSWER equals CFG(w) when z == x."""
    return (w + wn) / (1.0 + wn)


def answer(e_neg: Tensor, ep: Tensor, g: float) -> Tensor:
    """Eq. 5: ``e_ans = e_neg + g * (ep - e_neg)`` (one lerp)."""
    return torch.lerp(_f32(e_neg), _f32(ep), g)


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
