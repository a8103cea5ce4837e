"""The sampling loop: CFG, DNS and ANSWER (parallel and inner modes) over one denoiser.

In the style of k-diffusion's samplers: one function, a denoiser in, latents out.
A denoiser is ``raw = denoiser(latents[N], t[N], cond[N])``; ``BranchEvaluator`` stacks
the branches of a step on the batch axis and makes ONE call (``fused=True``) or calls
the denoiser once per branch (the unfused reference). Equations are docs/ANSWER.md's.

What a step asks of the denoiser and how the outputs combine is the method's guider
(``answer_trt.guiders``, one class per method, made by ``make_guider``); this module
runs the loop. The loop is a generator (``sampling_program``): it yields the
``DenoiserCall`` each denoiser call needs and is sent their outputs, so it never calls
a denoiser. ``sample`` answers it with one ``BranchEvaluator``; the serving batcher
(``answer_trt.serving.batcher``) answers many programs at once with one call per step
across requests. One loop, so both give the same latents.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from answer_trt.conditioning import Conditioning, TextCondition, cat_conditions
from answer_trt.config import GuidanceConfig
from answer_trt.guiders import DenoiserCall, StepContext, make_guider
from answer_trt.schedulers import StepNoise, StepRule, make_step_rule


class Denoiser(Protocol):
    def __call__(self, latents: Tensor, timesteps: Tensor, cond: TextCondition) -> Tensor: ...


StepCallback = Callable[[int, int], None]


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


Probe = Callable[[dict[str, Any]], None]


SamplingProgram = Generator[DenoiserCall, list[Tensor], Tensor]
"""Yields the ``DenoiserCall`` of each denoiser call, is sent the outputs (one tensor per
branch, in order), returns the final latents."""


def run_program(program: SamplingProgram, evaluate: BranchEvaluator) -> Tensor:
    """Answer every call of ``program`` with ``evaluate``; return its latents."""
    try:
        call = next(program)
        while True:
            call = program.send(evaluate(call.latents, call.conds, call.t))
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
    step_noise: StepNoise | None = None,
) -> Tensor:
    """Run ``steps`` denoising steps from ``noise`` (unit variance) and return the latents.

    ``scheduler`` is a diffusers scheduler configured for epsilon; its timesteps are set
    here. ``exact_diffusers_step`` forces its own ``step()`` over the precomputed linear rule.
    ``probe`` (debugging, docs/ANSWER.md "Diagnosis") gets a dict per step, before the
    update: i, t, alpha, sigma, x, x_in, ep, e (the guided noise), and for ANSWER e_neg,
    z_in (parallel mode) and anchored. ``step_noise``: where a stochastic sampler draws its
    step noise (``schedulers.StepNoise``; without it, from torch's global generator).
    """
    rule = make_step_rule(scheduler, steps, exact_diffusers_step)
    if step_noise is not None:
        rule = rule.seeded(step_noise)
    program = sampling_program(noise, cond, rule, guidance,
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
    noised: bool = False,
    after_step: Callable[[int, Tensor], Tensor] | None = None,
) -> SamplingProgram:
    """``sample``'s loop over a step rule, as a program (see the module docstring).
    ``noised``: ``noise`` is already the latents at the rule's first noise level (img2img's
    noised image, ``answer_trt.img2img.start_latents``), not unit noise to scale. ``after_step(i, x)``
    replaces x after step i's update (inpainting's blend, ``answer_trt.inpaint``)."""
    x = noise.to(torch.float32) if noised else noise.to(torch.float32) * rule.init_noise_sigma
    # float32, on the latents' device once: no host-to-device copy per UNet call.
    context = StepContext(rule, cond, prediction_type, rule.timesteps.to(x.device, torch.float32))
    guide = make_guider(guidance).start(context, probing=probe is not None)
    n = len(rule.timesteps)
    for i in range(n):
        x_in = rule.scale_input(x, i)
        e, seen = yield from guide(i, x, x_in)
        if probe is not None:
            alpha, sigma = rule.levels(i)
            probe({"i": i, "t": rule.timesteps[i], "alpha": alpha, "sigma": sigma, "x": x, "x_in": x_in, **seen,
                   "e": e})
        x = rule.step(e, i, x)
        if after_step is not None:
            x = after_step(i, x)
        if callback is not None:
            callback(i, n)
    return x
