"""A whole denoising step as a replayable graph: fused UNet call + guidance + scheduler
update, on static device buffers, for CUDA-graph capture.

Every per-step number the step needs (noise levels, input scale, update coefficients,
timestep) is read from a device table row copied into a static buffer before each
replay, so one captured graph serves every step of its kind. ANSWER in parallel mode
has two kinds (re-anchor steps: z <- x and a 2-row call; other steps: a 3-row call);
CFG and DNS have one. A graph is re-captured when its key (kind, shapes, the
condition tensors' addresses) changes. Needs a ``LinearStepRule`` scheduler (DDIM, Euler)
and a denoiser that can be captured (no host synchronization).

The capture itself is injected: ``CudaGraphCapturer`` on a GPU, ``EagerCapturer`` (runs
the step function at each replay) anywhere else, which is how the step logic is
tested on the CPU against ``sampler.sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from answer_trt import guidance as G
from answer_trt.conditioning import cat_conditions
from answer_trt.config import GuidanceConfig
from answer_trt.sampler import Conditioning, Denoiser, StepCallback, anchored_steps
from answer_trt.schedulers import LinearStepRule, make_step_rule

# Columns of the per-step table.
ALPHA, SIGMA, INPUT_SCALE, X_COEF, EPS_COEF, TIMESTEP = range(6)

Replay = Callable[[], None]


class Capturer(Protocol):
    def capture(self, step: Callable[[], None]) -> Replay: ...


class EagerCapturer:
    """No graph: replay runs the step function again (CPU tests, debugging)."""

    def capture(self, step: Callable[[], None]) -> Replay:
        return step


class CudaGraphCapturer:
    """``torch.cuda.CUDAGraph`` capture after warm-up runs on a side stream."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup

    def capture(self, step: Callable[[], None]) -> Replay:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay


@dataclass
class GraphCache:
    """One replayable graph per step kind; a new key for a kind re-captures it."""

    capturer: Capturer
    graphs: dict[str, tuple[tuple[Any, ...], Replay]] = field(default_factory=dict)
    captures: int = 0

    def get(self, kind: str, key: tuple[Any, ...], step: Callable[[], None], state: tuple[Tensor, ...] = ()) -> Replay:
        """The graph for ``kind``; capturing runs warm-up steps, so ``state`` (the buffers
        a step updates) is saved before and restored after."""
        cached = self.graphs.get(kind)
        if cached is not None and cached[0] == key:
            return cached[1]
        saved = [t.clone() for t in state]
        replay = self.capturer.capture(step)
        for buffer, value in zip(state, saved):
            buffer.copy_(value)
        self.graphs[kind] = (key, replay)
        self.captures += 1
        return replay


def step_table(rule: LinearStepRule, device: torch.device) -> Tensor:
    """``[steps, 6]`` float32: alpha, sigma, input scale, x and eps coefficients, t."""
    rows = [
        [a, s, scale, xc, ec, float(t)]
        for a, s, scale, xc, ec, t in zip(rule.alphas, rule.sigmas, rule.input_scales, rule.x_coefs,
                                            rule.eps_coefs, rule.timesteps.tolist())
    ]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def supports(guidance: GuidanceConfig, rule: Any) -> bool:
    """Graphable: a linear step rule, and any method but ANSWER's inner mode."""
    return isinstance(rule, LinearStepRule) and not (guidance.method == "answer" and guidance.mode == "inner")


def sample_graphed(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    scheduler: Any,
    steps: int,
    guidance: GuidanceConfig,
    *,
    prediction_type: str = "epsilon",
    cache: GraphCache | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """``sampler.sample`` with each step replayed from a graph (same equations, same result)."""
    rule = make_step_rule(scheduler, steps)
    if not supports(guidance, rule):
        raise ValueError("graphed sampling needs DDIM or Euler and a method other than ANSWER's inner mode")
    assert isinstance(rule, LinearStepRule)
    cache = cache if cache is not None else GraphCache(EagerCapturer())
    device = noise.device
    table = step_table(rule, device)
    s = torch.empty(TIMESTEP + 1, dtype=torch.float32, device=device)  # this step's row of the table
    x = (noise.to(torch.float32) * rule.init_noise_sigma).contiguous()
    z = torch.empty_like(x)
    batch = x.shape[0]
    c_p, c_0 = cond.positive, cond.negative
    two, three = cat_conditions([c_p, c_0]), cat_conditions([c_p, c_p, c_0])
    w, wn = guidance.guidance_scale, guidance.wn
    g = G.answer_scale(w, wn) if guidance.method == "answer" else 1.0  # 1 + wn may be 0 for CFG

    def eps(raw: Tensor, x_in: Tensor) -> Tensor:
        raw = raw.to(torch.float32)
        if prediction_type == "epsilon":
            return raw
        return s[ALPHA] * raw + s[SIGMA] * x_in  # v-prediction, with tensor levels

    def timesteps(n: int) -> Tensor:
        return s[TIMESTEP].expand(n)

    def update(chain: Tensor, e: Tensor) -> None:
        chain.copy_(chain * s[X_COEF] + e * s[EPS_COEF])

    tau, phi = guidance.drift_tau, guidance.guidance_rescale

    def two_row_step() -> None:  # CFG, DNS, and ANSWER's re-anchor steps
        if guidance.method == "answer":
            z.copy_(x)
        x_in = x * s[INPUT_SCALE]
        raw_p, raw_0 = denoiser(torch.cat([x_in, x_in]), timesteps(2 * batch), two).chunk(2)
        ep, e0 = eps(raw_p, x_in), eps(raw_0, x_in)
        if guidance.method == "cfg":
            update(x, G.rescale(G.cfg(e0, ep, w), ep, phi))
            return
        if guidance.method == "dns":
            update(x, G.dns(e0, ep, wn))
            return
        e, e_dns = G.parallel_answer(ep, ep, e0, x_in, x_in, s[ALPHA], s[SIGMA], g, wn, tau, phi)  # z == x
        update(x, e)
        update(z, e_dns)

    def three_row_step() -> None:  # ANSWER parallel between re-anchors
        x_in, z_in = x * s[INPUT_SCALE], z * s[INPUT_SCALE]
        raw_p, raw_pz, raw_0 = denoiser(torch.cat([x_in, z_in, z_in]), timesteps(3 * batch), three).chunk(3)
        e, e_dns = G.parallel_answer(eps(raw_p, x_in), eps(raw_pz, z_in), eps(raw_0, z_in), x_in, z_in,
                                     s[ALPHA], s[SIGMA], g, wn, tau, phi)
        update(x, e)
        update(z, e_dns)

    addresses = tuple(t.data_ptr() for c in (two, three) for t in c.feeds().values())
    key = (tuple(x.shape), str(x.dtype), addresses)
    anchored = anchored_steps(rule.sigmas, guidance.dns_steps, guidance.chain_min_sigma)
    for i in range(len(rule.timesteps)):
        s.copy_(table[i])
        two_rows = guidance.method != "answer" or anchored[i]
        replay = cache.get("two" if two_rows else "three", key, two_row_step if two_rows else three_row_step,
                           state=(x, z))
        replay()
        if callback is not None:
            callback(i, len(rule.timesteps))
    return x
