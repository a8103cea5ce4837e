"""The sampling loop: CFG, DNS and ANSWER (parallel and inner modes) over one denoiser.

In the style of k-diffusion's samplers: one function, a denoiser in, latents out.
A denoiser is ``raw = denoiser(latents[N], t[N], cond[N])``; ``BranchEvaluator`` stacks
the branches of a step on the batch axis and makes ONE call (``fused=True``) or calls
the denoiser once per branch (the unfused reference). Equations are ANSWER.md's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from answer_trt import guidance as G
from answer_trt.config import GuidanceConfig
from answer_trt.schedulers import noise_levels


class Denoiser(Protocol):
    def __call__(self, latents: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor: ...


StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Conditioning:
    """Text conditions of a batch: ``positive`` is c_p; ``negative`` is c_0, or the
    embedding of a user negative prompt, which replaces c_0 everywhere."""

    positive: Tensor
    negative: Tensor


class BranchEvaluator:
    """Evaluates the branches ``[(latents_i, cond_i)]`` of one step.

    Fused: the branches are concatenated on the batch axis and sent as one call,
    then split. Unfused: one call per branch. Stacked conditions are cached, since
    the same few combinations recur at every step.
    """

    def __init__(self, denoiser: Denoiser, fused: bool = True) -> None:
        self.denoiser = denoiser
        self.fused = fused
        self.calls = 0
        self._stacked: dict[tuple[int, ...], Tensor] = {}

    def __call__(self, latents: Sequence[Tensor], conds: Sequence[Tensor], t: Tensor) -> list[Tensor]:
        if not self.fused:
            outputs = []
            for lat, cond in zip(latents, conds):
                self.calls += 1
                outputs.append(self.denoiser(lat, t.expand(lat.shape[0]), cond))
            return outputs
        key = tuple(id(c) for c in conds)
        if key not in self._stacked:
            self._stacked[key] = torch.cat(list(conds))
        cond = self._stacked[key]
        stacked = torch.cat(list(latents))
        self.calls += 1
        out = self.denoiser(stacked, t.expand(stacked.shape[0]), cond)
        return list(out.chunk(len(latents)))


def sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    scheduler: Any,
    steps: int,
    guidance: GuidanceConfig,
    *,
    prediction_type: str = "epsilon",
    fused: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run ``steps`` denoising steps from ``noise`` (unit variance) and return the latents.

    ``scheduler`` is a diffusers scheduler configured for epsilon; it is mutated.
    """
    scheduler.set_timesteps(steps)
    evaluate = BranchEvaluator(denoiser, fused)
    x = noise.to(torch.float32) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    n = len(timesteps)
    c_p, c_0 = cond.positive, cond.negative
    wn = guidance.wn
    g = G.answer_scale(guidance.guidance_scale, wn)
    k = guidance.dns_steps
    z: Tensor | None = None
    scheduler_z: Any = None

    def eps_of(raw: Tensor, x_in: Tensor, alpha: float, sigma: float) -> Tensor:
        return G.to_epsilon(raw, x_in, alpha, sigma, prediction_type)

    for i, t in enumerate(timesteps):
        alpha, sigma = noise_levels(scheduler, i, t)
        x_in = scheduler.scale_model_input(x, t)
        if guidance.method in ("cfg", "dns") or guidance.mode == "inner":
            raw_p, raw_0 = evaluate([x_in, x_in], [c_p, c_0], t)
            ep, e0 = eps_of(raw_p, x_in, alpha, sigma), eps_of(raw_0, x_in, alpha, sigma)
            if guidance.method == "cfg":
                e = G.cfg(e0, ep, guidance.guidance_scale)
            elif guidance.method == "dns":
                e = G.dns(e0, ep, wn)
            else:
                xneg0 = _inner_negative(evaluate, scheduler, x, x_in, i, ep, e0, (c_p, c_0), k, wn, (alpha, sigma), eps_of)
                e = G.answer(G.negative_noise(x_in, xneg0, alpha, sigma), ep, g)
        else:
            if i % k == 0:
                # Re-anchor: z <- x with the scheduler state; (z, c_p) duplicates (x, c_p).
                z, scheduler_z = x, copy.deepcopy(scheduler)
                raw_p, raw_0 = evaluate([x_in, x_in], [c_p, c_0], t)
                z_in = x_in
                ep = ep_z = eps_of(raw_p, x_in, alpha, sigma)
            else:
                assert z is not None  # set at step 0
                z_in = scheduler_z.scale_model_input(z, t)
                raw_p, raw_pz, raw_0 = evaluate([x_in, z_in, z_in], [c_p, c_p, c_0], t)
                ep, ep_z = eps_of(raw_p, x_in, alpha, sigma), eps_of(raw_pz, z_in, alpha, sigma)
            e0_z = eps_of(raw_0, z_in, alpha, sigma)
            e_dns = G.dns(e0_z, ep_z, wn)
            xneg0 = G.tweedie_x0(z_in, e_dns, alpha, sigma)
            e = G.answer(G.negative_noise(x_in, xneg0, alpha, sigma), ep, g)
            if (i + 1) % k != 0 and i + 1 < n:  # z is re-anchored (or unused) otherwise
                z = scheduler_z.step(e_dns, t, z).prev_sample
        x = scheduler.step(e, t, x).prev_sample
        if callback is not None:
            callback(i, n)
    return x


def _inner_negative(
    evaluate: BranchEvaluator,
    scheduler: Any,
    x: Tensor,
    x_in: Tensor,
    i: int,
    ep: Tensor,
    e0: Tensor,
    conds: tuple[Tensor, Tensor],
    k: int,
    wn: float,
    levels: tuple[float, float],
    eps_of: Callable[[Tensor, Tensor, float, float], Tensor],
) -> Tensor:
    """Inner mode: from z = x, up to K DNS iterations on the step grid; returns xneg0
    of the last one. The first iteration reuses the main call's ``ep``/``e0`` on x."""
    timesteps = scheduler.timesteps
    e_dns = G.dns(e0, ep, wn)
    xneg0 = G.tweedie_x0(x_in, e_dns, *levels)
    iterations = min(k, len(timesteps) - i)
    if iterations == 1:
        return xneg0
    scheduler_z = copy.deepcopy(scheduler)
    z = x
    for j in range(i + 1, i + iterations):
        z = scheduler_z.step(e_dns, timesteps[j - 1], z).prev_sample
        t_j = timesteps[j]
        alpha_j, sigma_j = noise_levels(scheduler_z, j, t_j)
        z_in = scheduler_z.scale_model_input(z, t_j)
        raw_p, raw_0 = evaluate([z_in, z_in], list(conds), t_j)
        e_dns = G.dns(eps_of(raw_0, z_in, alpha_j, sigma_j), eps_of(raw_p, z_in, alpha_j, sigma_j), wn)
        xneg0 = G.tweedie_x0(z_in, e_dns, alpha_j, sigma_j)
    return xneg0
