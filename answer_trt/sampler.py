"""The sampling loop: CFG, DNS and ANSWER (parallel and inner modes) over one denoiser.

In the style of k-diffusion's samplers: one function, a denoiser in, latents out.
A denoiser is ``raw = denoiser(latents[N], t[N], cond[N])``; ``BranchEvaluator`` stacks
the branches of a step on the batch axis and makes ONE call (``fused=True``) or calls
the denoiser once per branch (the unfused reference). Equations are docs/ANSWER.md's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from answer_trt import guidance as G
from answer_trt.conditioning import TextCondition, cat_conditions
from answer_trt.config import GuidanceConfig
from answer_trt.schedulers import StepRule, make_step_rule


class Denoiser(Protocol):
    def __call__(self, latents: Tensor, timesteps: Tensor, cond: TextCondition) -> Tensor: ...


StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Conditioning:
    """Text conditions of a batch: ``positive`` is c_p; ``negative`` is c_0, or the
    embedding of a user negative prompt, which replaces c_0 everywhere."""

    positive: TextCondition
    negative: TextCondition


class BranchEvaluator:
    """Evaluates the branches ``[(latents_i, cond_i)]`` of one step.

    Fused: the branches are concatenated on the batch axis and sent as one call,
    then split. Unfused: one call per branch. Stacked conditions are cached, since
    the same few combinations recur at every step.
    """

    def __init__(self, denoiser: Denoiser, fused: bool = True) -> None:
        self.denoiser = denoiser
        self.fused = fused
        self._stacked: dict[tuple[int, ...], TextCondition] = {}

    def __call__(self, latents: Sequence[Tensor], conds: Sequence[TextCondition], t: Tensor) -> list[Tensor]:
        if not self.fused:
            outputs = []
            for lat, cond in zip(latents, conds):
                outputs.append(self.denoiser(lat, t.expand(lat.shape[0]), cond))
            return outputs
        key = tuple(id(c) for c in conds)
        if key not in self._stacked:
            self._stacked[key] = cat_conditions(conds)
        cond = self._stacked[key]
        stacked = torch.cat(list(latents))
        out = self.denoiser(stacked, t.expand(stacked.shape[0]), cond)
        return list(out.chunk(len(latents)))


def anchored_steps(sigmas: Sequence[float], k: int, chain_min_sigma: float = 0.0) -> list[bool]:
    """Which steps re-anchor the negative chain (z <- x): every K-th step, and every step
    whose noise level sigma_t is below ``chain_min_sigma`` (docs/ANSWER.md, variant
    "interval"); at those steps ANSWER in parallel mode equals CFG."""
    return [i % k == 0 or sigma < chain_min_sigma for i, sigma in enumerate(sigmas)]


Probe = Callable[[dict[str, Any]], None]


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
    exact_diffusers_step: bool = False,
    callback: StepCallback | None = None,
    probe: Probe | None = None,
) -> Tensor:
    """Run ``steps`` denoising steps from ``noise`` (unit variance) and return the latents.

    ``scheduler`` is a diffusers scheduler configured for epsilon; its timesteps are set
    here. ``exact_diffusers_step`` forces its own ``step()`` over the precomputed linear rule.
    ``probe`` (debugging, docs/ANSWER.md "Diagnosis") gets a dict per step, before the
    update: i, t, alpha, sigma, x, x_in, ep, e (the guided noise), and for ANSWER e_neg,
    z_in (parallel mode) and anchored.
    """
    rule = make_step_rule(scheduler, steps, exact_diffusers_step)
    evaluate = BranchEvaluator(denoiser, fused)
    x = noise.to(torch.float32) * rule.init_noise_sigma
    timesteps = rule.timesteps
    n = len(timesteps)
    c_p, c_0 = cond.positive, cond.negative
    w, wn, phi = guidance.guidance_scale, guidance.wn, guidance.guidance_rescale
    g = G.answer_scale(w, wn) if guidance.method == "answer" else 1.0  # 1 + wn may be 0 for CFG
    k = guidance.dns_steps
    sigmas = [rule.levels(i)[1] for i in range(n)]
    anchored = anchored_steps(sigmas, k, guidance.chain_min_sigma)
    prediction_is_eps = prediction_type == "epsilon"
    z = x
    rule_z = rule

    def eps_of(raw: Tensor, x_in: Tensor, alpha: float, sigma: float) -> Tensor:
        return raw if prediction_is_eps else G.to_epsilon(raw, x_in, alpha, sigma, prediction_type)

    for i in range(n):
        t = timesteps[i]
        alpha, sigma = rule.levels(i)
        x_in = rule.scale_input(x, i)
        seen: dict[str, Any] = {}
        if guidance.method in ("cfg", "dns") or guidance.mode == "inner":
            raw_p, raw_0 = evaluate([x_in, x_in], [c_p, c_0], t)
            ep, e0 = eps_of(raw_p, x_in, alpha, sigma), eps_of(raw_0, x_in, alpha, sigma)
            if guidance.method == "cfg":
                e = G.rescale(G.cfg(e0, ep, w), ep, phi)
            elif guidance.method == "dns":
                e = G.dns(e0, ep, wn)
            else:
                iterations = 1 if sigma < guidance.chain_min_sigma else k
                xneg0 = _inner_negative(evaluate, rule, x, x_in, i, ep, e0, (c_p, c_0), iterations, wn,
                                        (alpha, sigma), eps_of)
                e_neg = G.negative_noise(x_in, xneg0, alpha, sigma)
                e = G.rescale(G.answer(e_neg, ep, g), ep, phi)
                seen = {"e_neg": e_neg, "anchored": True}
        else:
            if anchored[i]:
                # Re-anchor: z <- x with the scheduler state; (z, c_p) duplicates (x, c_p).
                z, rule_z = x, rule.fork()
                raw_p, raw_0 = evaluate([x_in, x_in], [c_p, c_0], t)
                z_in = x_in
                ep = ep_z = eps_of(raw_p, x_in, alpha, sigma)
            else:
                z_in = rule_z.scale_input(z, i)
                raw_p, raw_pz, raw_0 = evaluate([x_in, z_in, z_in], [c_p, c_p, c_0], t)
                ep, ep_z = eps_of(raw_p, x_in, alpha, sigma), eps_of(raw_pz, z_in, alpha, sigma)
            e, e_dns = G.parallel_answer(ep, ep_z, eps_of(raw_0, z_in, alpha, sigma), x_in, z_in, alpha, sigma,
                                         g, wn, guidance.drift_tau, phi)
            if probe is not None:
                rho = G.drift_weight(alpha, sigma, guidance.drift_tau)
                seen = {"e_neg": e_dns + (x_in - z_in) * (rho / sigma), "z_in": z_in, "anchored": anchored[i]}
            if i + 1 < n and not anchored[i + 1]:  # z is re-anchored (or unused) otherwise
                z = rule_z.step(e_dns, i, z)
        if probe is not None:
            probe({"i": i, "t": t, "alpha": alpha, "sigma": sigma, "x": x, "x_in": x_in, "ep": ep, "e": e, **seen})
        x = rule.step(e, i, x)
        if callback is not None:
            callback(i, n)
    return x


def _inner_negative(
    evaluate: BranchEvaluator,
    rule: StepRule,
    x: Tensor,
    x_in: Tensor,
    i: int,
    ep: Tensor,
    e0: Tensor,
    conds: tuple[TextCondition, TextCondition],
    iterations: int,
    wn: float,
    levels: tuple[float, float],
    eps_of: Callable[[Tensor, Tensor, float, float], Tensor],
) -> Tensor:
    """Inner mode: from z = x, up to K DNS iterations on the step grid; returns xneg0
    of the last one. The first iteration reuses the main call's ``ep``/``e0`` on x."""
    e_dns = G.dns(e0, ep, wn)
    xneg0 = G.tweedie_x0(x_in, e_dns, *levels)
    iterations = min(iterations, len(rule.timesteps) - i)
    if iterations == 1:
        return xneg0
    rule_z = rule.fork()
    z = x
    for j in range(i + 1, i + iterations):
        z = rule_z.step(e_dns, j - 1, z)
        alpha_j, sigma_j = rule_z.levels(j)
        z_in = rule_z.scale_input(z, j)
        raw_p, raw_0 = evaluate([z_in, z_in], list(conds), rule.timesteps[j])
        e_dns = G.dns(eps_of(raw_0, z_in, alpha_j, sigma_j), eps_of(raw_p, z_in, alpha_j, sigma_j), wn)
        xneg0 = G.tweedie_x0(z_in, e_dns, alpha_j, sigma_j)
    return xneg0
