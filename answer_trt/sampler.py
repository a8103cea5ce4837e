"""The sampling loop: CFG, DNS and ANSWER (parallel and inner modes) over one denoiser.

In the style of k-diffusion's samplers: one function, a denoiser in, latents out.
A denoiser is ``raw = denoiser(latents[N], t[N], cond[N])``; ``BranchEvaluator`` stacks
the branches of a step on the batch axis and makes ONE call (``fused=True``) or calls
the denoiser once per branch (the unfused reference). Equations are docs/ANSWER.md's.

The loop itself is a generator (``sampling_program``): it yields the ``Rows`` each
denoiser call needs and is sent their outputs, so it never calls a denoiser. ``sample``
answers it with one ``BranchEvaluator``; the serving batcher
(``answer_trt.serving.batcher``) answers many programs at once with one call per step
across requests. One loop, so both give the same latents.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
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


@dataclass(frozen=True)
class Rows:
    """What one denoiser call of a program needs: branch i is ``latents[i]`` (each
    ``[B, C, h, w]``) conditioned on ``conds[i]``, all at timestep ``t`` (0-d)."""

    latents: tuple[Tensor, ...]
    conds: tuple[TextCondition, ...]
    t: Tensor

    @property
    def count(self) -> int:
        """Rows on the batch axis: branches x images."""
        return sum(int(lat.shape[0]) for lat in self.latents)


SamplingProgram = Generator[Rows, list[Tensor], Tensor]
"""Yields the ``Rows`` of each denoiser call, is sent the outputs (one tensor per branch,
in order), returns the final latents."""


def run_program(program: SamplingProgram, evaluate: BranchEvaluator) -> Tensor:
    """Answer every call of ``program`` with ``evaluate``; return its latents."""
    try:
        rows = next(program)
        while True:
            rows = program.send(evaluate(rows.latents, rows.conds, rows.t))
    except StopIteration as done:
        latents: Tensor = done.value
        return latents


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
    program = sampling_program(noise, cond, make_step_rule(scheduler, steps, exact_diffusers_step), guidance,
                               prediction_type=prediction_type, callback=callback, probe=probe)
    return run_program(program, BranchEvaluator(denoiser, fused))


def sampling_program(
    noise: Tensor,
    cond: Conditioning,
    rule: StepRule,
    guidance: GuidanceConfig,
    *,
    prediction_type: str = "epsilon",
    callback: StepCallback | None = None,
    probe: Probe | None = None,
) -> SamplingProgram:
    """``sample``'s loop over a step rule, as a program (see the module docstring)."""
    x = noise.to(torch.float32) * rule.init_noise_sigma
    # float32, on the latents' device once: no host-to-device copy per UNet call.
    loop = _Loop(rule, cond, guidance, prediction_type, rule.timesteps.to(x.device, torch.float32))
    n = len(rule.timesteps)
    parallel = guidance.method == "answer" and guidance.mode == "parallel"
    chain = _ParallelChain(loop, probing=probe is not None) if parallel else None
    for i in range(n):
        x_in = rule.scale_input(x, i)
        if chain is not None:
            e, seen = yield from chain.guide(i, x, x_in)
        else:
            e, seen = yield from _two_row_guidance(loop, i, x, x_in)
        if probe is not None:
            alpha, sigma = rule.levels(i)
            probe({"i": i, "t": rule.timesteps[i], "alpha": alpha, "sigma": sigma, "x": x, "x_in": x_in, **seen,
                   "e": e})
        x = rule.step(e, i, x)
        if callback is not None:
            callback(i, n)
    return x


@dataclass(frozen=True)
class _Loop:
    """What every step of one ``sample`` call reads."""

    rule: StepRule
    cond: Conditioning
    guidance: GuidanceConfig
    prediction_type: str
    timesteps: Tensor  # the rule's timesteps, float32 on the latents' device

    @property
    def g(self) -> float:
        """Eq. 5's normalized scale (only ANSWER uses it: 1 + wn may be 0 for CFG)."""
        return G.answer_scale(self.guidance.guidance_scale, self.guidance.wn)

    def eps_of(self, raw: Tensor, x_in: Tensor, alpha: float, sigma: float) -> Tensor:
        if self.prediction_type == "epsilon":
            return raw
        return G.to_epsilon(raw, x_in, alpha, sigma, self.prediction_type)


Guided = Generator[Rows, list[Tensor], tuple[Tensor, dict[str, Any]]]
"""One step's guidance as a program: yields its calls, returns (e, what the probe sees)."""


def _two_row_guidance(loop: _Loop, i: int, x: Tensor, x_in: Tensor) -> Guided:
    """CFG (Eq. 1, rescale Eq. 7), DNS (Eq. 2) or ANSWER in inner mode (Eqs. 3-5) at step i:
    one call on ``[(x, c_p), (x, c_0)]`` (inner mode adds its DNS iterations)."""
    guidance, rule = loop.guidance, loop.rule
    alpha, sigma = rule.levels(i)
    c_p, c_0 = loop.cond.positive, loop.cond.negative
    raw_p, raw_0 = yield Rows((x_in, x_in), (c_p, c_0), loop.timesteps[i])
    ep, e0 = loop.eps_of(raw_p, x_in, alpha, sigma), loop.eps_of(raw_0, x_in, alpha, sigma)
    if guidance.method == "cfg":
        return G.rescale(G.cfg(e0, ep, guidance.guidance_scale), ep, guidance.guidance_rescale), {"ep": ep}
    if guidance.method == "dns":
        return G.dns(e0, ep, guidance.wn), {"ep": ep}
    iterations = 1 if sigma < guidance.chain_min_sigma else guidance.dns_steps  # variant "interval"
    xneg0 = yield from _inner_negative(rule, loop.timesteps, x, x_in, i, ep, e0, (c_p, c_0), iterations,
                                       guidance.wn, (alpha, sigma), loop.eps_of)
    e_neg = G.negative_noise(x_in, xneg0, alpha, sigma)
    e = G.rescale(G.answer(e_neg, ep, loop.g), ep, guidance.guidance_rescale)
    return e, {"ep": ep, "e_neg": e_neg, "anchored": True}


class _ParallelChain:
    """ANSWER's parallel mode: the negative chain z beside x, re-anchored (z <- x, with the
    scheduler state) at the anchored steps; one fused call per step, 2 rows at an anchor
    (where (z, c_p) would duplicate (x, c_p)) and 3 rows otherwise."""

    def __init__(self, loop: _Loop, probing: bool = False) -> None:
        self.loop = loop
        self.probing = probing
        rule, guidance = loop.rule, loop.guidance
        sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
        self.anchored = anchored_steps(sigmas, guidance.dns_steps, guidance.chain_min_sigma)
        self.g = loop.g
        self.z: Tensor | None = None
        self.rule_z = rule

    def guide(self, i: int, x: Tensor, x_in: Tensor) -> Guided:
        loop, rule, guidance = self.loop, self.loop.rule, self.loop.guidance
        alpha, sigma = rule.levels(i)
        c_p, c_0, t = loop.cond.positive, loop.cond.negative, loop.timesteps[i]
        if self.anchored[i]:
            self.z, self.rule_z = x, rule.fork()
            raw_p, raw_0 = yield Rows((x_in, x_in), (c_p, c_0), t)
            z_in = x_in
            ep = ep_z = loop.eps_of(raw_p, x_in, alpha, sigma)
        else:
            assert self.z is not None  # step 0 is always anchored
            z_in = self.rule_z.scale_input(self.z, i)
            raw_p, raw_pz, raw_0 = yield Rows((x_in, z_in, z_in), (c_p, c_p, c_0), t)
            ep, ep_z = loop.eps_of(raw_p, x_in, alpha, sigma), loop.eps_of(raw_pz, z_in, alpha, sigma)
        e, e_dns = G.parallel_answer(ep, ep_z, loop.eps_of(raw_0, z_in, alpha, sigma), x_in, z_in, alpha, sigma,
                                     self.g, guidance.wn, guidance.drift_tau, guidance.guidance_rescale)
        if i + 1 < len(self.anchored) and not self.anchored[i + 1]:  # z is re-anchored (or unused) otherwise
            assert self.z is not None
            self.z = self.rule_z.step(e_dns, i, self.z)
        if not self.probing:
            return e, {}
        return e, {"ep": ep, "z_in": z_in, "anchored": self.anchored[i],
                   "e_neg": G.parallel_negative(e_dns, x_in, z_in, alpha, sigma, guidance.drift_tau)}


def _inner_negative(
    rule: StepRule,
    timesteps: Tensor,
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
) -> Generator[Rows, list[Tensor], Tensor]:
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
        raw_p, raw_0 = yield Rows((z_in, z_in), conds, timesteps[j])
        e_dns = G.dns(eps_of(raw_0, z_in, alpha_j, sigma_j), eps_of(raw_p, z_in, alpha_j, sigma_j), wn)
        xneg0 = G.tweedie_x0(z_in, e_dns, alpha_j, sigma_j)
    return xneg0
