"""A whole denoising step as a replayable graph: fused UNet call + guidance + scheduler
update, on static device buffers, for CUDA-graph capture.

Every per-step number the step needs (noise levels, input scale, update coefficients,
timestep) is read from a device table row copied into a static buffer before each
replay, so one captured graph serves every step of its kind. ANSWER in parallel mode
has two kinds (re-anchor steps: z <- x and a 2-row call; other steps: a 3-row call);
CFG and DNS have one. Needs a ``LinearStepRule`` scheduler (DDIM, Euler) and a denoiser
that can be captured (no host synchronization).

A ``GraphCache`` (one per ``Pipeline``) owns the static buffers a step reads and
writes: the latents x and z, the step row, and the stacked conditions, one set per
shape, into which each call copies its noise and its prompt's conditions. A graph's
key is everything the captured step reads: its kind, the denoiser, the guidance and
prediction type (baked into the graph as constants), and every buffer's address. So a
graph is captured once per shape and configuration and replayed by every later call.

The capture itself is injected: ``CudaGraphCapturer`` on a GPU, ``EagerCapturer`` (runs
the step function at each replay) anywhere else, which is how the step logic is
tested on the CPU against ``sampler.sample``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from answer_trt import guidance as G
from answer_trt.conditioning import TextCondition, cat_conditions
from answer_trt.config import GuidanceConfig
from answer_trt.sampler import Conditioning, Denoiser, StepCallback, anchored_steps
from answer_trt.schedulers import LinearStepRule, make_step_rule

# Columns of the per-step table.
ALPHA, SIGMA, INPUT_SCALE, X_COEF, EPS_COEF, TIMESTEP = range(6)

Replay = Callable[[], None]


class Capturer(Protocol):
    requires_cuda: bool  # whether capture needs the pipeline's tensors on a CUDA device

    def capture(self, step: Callable[[], None]) -> Replay: ...


class EagerCapturer:
    """No graph: replay runs the step function again (CPU tests, debugging)."""

    requires_cuda = False

    def capture(self, step: Callable[[], None]) -> Replay:
        return step


# One capture at a time in this process: two captures interleaving on one device break both.
_CAPTURE_LOCK = threading.Lock()


class CudaGraphCapturer:
    """``torch.cuda.CUDAGraph`` capture after warm-up runs on a side stream.

    Captures in ``thread_local`` error mode, so CUDA work queued meanwhile by another
    thread (the serving batcher's worker, a second pipeline) does not invalidate the
    capture, and under a process-wide lock, so two captures never interleave."""

    requires_cuda = True

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup

    def capture(self, step: Callable[[], None]) -> Replay:
        with _CAPTURE_LOCK:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                step()
        return graph.replay


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _remember(entries: OrderedDict[K, V], key: K, value: V, limit: int) -> V:
    """Store ``value`` as the most recent entry, dropping the oldest beyond ``limit``."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)
    return value


@dataclass
class StepBuffers:
    """The static tensors a captured step reads and writes: this step's row of the
    table, the latents x and the negative chain z, and the stacked conditions of the
    2-row call ``(c_p, c_0)`` and the 3-row call ``(c_p, c_p, c_0)``."""

    row: Tensor
    x: Tensor
    z: Tensor
    two: TextCondition
    three: TextCondition

    @classmethod
    def like(cls, x: Tensor, cond: Conditioning) -> StepBuffers:
        def empty(c: TextCondition) -> TextCondition:
            grown = [None if t is None else torch.empty_like(t, device=x.device) for t in (c.pooled, c.time_ids)]
            return TextCondition(torch.empty_like(c.hidden, device=x.device), *grown)

        row = torch.empty(TIMESTEP + 1, dtype=torch.float32, device=x.device)
        two = cat_conditions([cond.positive, cond.negative])
        three = cat_conditions([cond.positive] * 2 + [cond.negative])
        return cls(row, torch.empty_like(x), torch.empty_like(x), empty(two), empty(three))

    def load(self, x: Tensor, cond: Conditioning) -> None:
        """Copy a call's starting latents and conditions into the buffers."""
        self.x.copy_(x)
        c_p, c_0 = cond.positive, cond.negative
        for static, values in ((self.two, cat_conditions([c_p, c_0])), (self.three, cat_conditions([c_p, c_p, c_0]))):
            for name, tensor in values.feeds().items():
                static.feeds()[name].copy_(tensor)

    def addresses(self) -> tuple[int, ...]:
        conditions = (t for c in (self.two, self.three) for t in c.feeds().values())
        return tuple(t.data_ptr() for t in (self.row, self.x, self.z, *conditions))


def buffer_signature(x: Tensor, cond: Conditioning) -> tuple[Any, ...]:
    """Shapes, dtypes and device of the buffers a call needs: equal signatures share buffers."""
    tensors = (x, *cond.positive.feeds().values(), *cond.negative.feeds().values())
    return tuple((tuple(t.shape), t.dtype) for t in tensors) + (str(x.device),)


@dataclass
class GraphCache:
    """Replayable step graphs and the static buffers they read, kept across calls (a
    ``Pipeline`` holds one): a graph is captured once per key and replayed after.

    ``limit`` bounds the graphs (and buffer sets) kept; the least recently used go."""

    capturer: Capturer
    limit: int = 8
    graphs: OrderedDict[tuple[str, Hashable], tuple[Replay, Callable[[], None]]] = field(default_factory=OrderedDict)
    buffers: OrderedDict[tuple[Any, ...], StepBuffers] = field(default_factory=OrderedDict)
    captures: int = 0

    def static_buffers(self, x: Tensor, cond: Conditioning) -> StepBuffers:
        """The buffers for this call's shapes (made on first use), loaded with ``x``
        and ``cond``."""
        signature = buffer_signature(x, cond)
        buffers = self.buffers.get(signature) or StepBuffers.like(x, cond)
        _remember(self.buffers, signature, buffers, self.limit)
        buffers.load(x, cond)
        return buffers

    def get(self, kind: str, key: Hashable, step: Callable[[], None], state: tuple[Tensor, ...] = ()) -> Replay:
        """The graph for ``(kind, key)``; capturing runs warm-up steps, so ``state`` (the
        buffers a step updates) is saved before and restored after."""
        cached = self.graphs.get((kind, key))
        if cached is not None:
            self.graphs.move_to_end((kind, key))
            return cached[0]
        saved = [t.clone() for t in state]
        replay = self.capturer.capture(step)
        for buffer, value in zip(state, saved):
            buffer.copy_(value)
        self.captures += 1
        # The step is kept with its graph: it holds the denoiser whose id is in the key.
        return _remember(self.graphs, (kind, key), (replay, step), self.limit)[0]


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


def refusal(guidance: GuidanceConfig, rule: Any, scheduler: Any) -> str | None:
    """Why ``--cuda-graph`` cannot run this request (one line that says what to change),
    or ``None`` where ``supports`` holds."""
    if supports(guidance, rule):
        return None
    if not isinstance(rule, LinearStepRule):
        name, config = type(scheduler).__name__, getattr(scheduler, "config", {})
        if name == "DDIMScheduler":
            options = [o for o in ("clip_sample", "thresholding") if config.get(o)]
            return (f"--cuda-graph replays DDIM as a linear update, and this model's DDIM config sets "
                    f"{' and '.join(options) or 'options'} (not linear): run without --cuda-graph, or pass "
                    "--scheduler euler")
        return f"--cuda-graph needs --scheduler ddim or euler (this request uses {name})"
    return "--cuda-graph runs ANSWER in --mode parallel only: pass --mode parallel, or run without --cuda-graph"


class GraphedStep:
    """The two step kinds as functions of the static buffers alone (what a graph
    captures): the same equations as ``sampler.sample``, with tensor noise levels."""

    def __init__(self, denoiser: Denoiser, buffers: StepBuffers, guidance: GuidanceConfig,
                 prediction_type: str) -> None:
        self.denoiser, self.b, self.guidance, self.prediction_type = denoiser, buffers, guidance, prediction_type
        self.batch = buffers.x.shape[0]
        self.w, self.wn = guidance.guidance_scale, guidance.wn
        self.g = G.answer_scale(self.w, self.wn) if guidance.method == "answer" else 1.0  # 1 + wn may be 0 for CFG
        self.tau, self.phi = guidance.drift_tau, guidance.guidance_rescale

    def key(self) -> Hashable:
        """Everything the captured step reads besides the buffers' contents."""
        return (id(self.denoiser), self.guidance, self.prediction_type, self.b.addresses())

    def eps(self, raw: Tensor, x_in: Tensor) -> Tensor:
        raw = raw.to(torch.float32)
        if self.prediction_type == "epsilon":
            return raw
        s = self.b.row
        return s[ALPHA] * raw + s[SIGMA] * x_in  # v-prediction, with tensor levels

    def timesteps(self, n: int) -> Tensor:
        return self.b.row[TIMESTEP].expand(n)

    def update(self, chain: Tensor, e: Tensor) -> None:
        s = self.b.row
        chain.copy_(chain * s[X_COEF] + e * s[EPS_COEF])

    def two_row_step(self) -> None:  # CFG, DNS, and ANSWER's re-anchor steps
        b, s, method = self.b, self.b.row, self.guidance.method
        if method == "answer":
            b.z.copy_(b.x)
        x_in = b.x * s[INPUT_SCALE]
        raw_p, raw_0 = self.denoiser(torch.cat([x_in, x_in]), self.timesteps(2 * self.batch), b.two).chunk(2)
        ep, e0 = self.eps(raw_p, x_in), self.eps(raw_0, x_in)
        if method == "cfg":
            self.update(b.x, G.rescale(G.cfg(e0, ep, self.w), ep, self.phi))
            return
        if method == "dns":
            self.update(b.x, G.dns(e0, ep, self.wn))
            return
        e, e_dns = G.parallel_answer(ep, ep, e0, x_in, x_in, s[ALPHA], s[SIGMA], self.g, self.wn, self.tau,
                                     self.phi)  # z == x
        self.update(b.x, e)
        self.update(b.z, e_dns)

    def three_row_step(self) -> None:  # ANSWER parallel between re-anchors
        b, s = self.b, self.b.row
        x_in, z_in = b.x * s[INPUT_SCALE], b.z * s[INPUT_SCALE]
        raw_p, raw_pz, raw_0 = self.denoiser(torch.cat([x_in, z_in, z_in]), self.timesteps(3 * self.batch),
                                             b.three).chunk(3)
        e, e_dns = G.parallel_answer(self.eps(raw_p, x_in), self.eps(raw_pz, z_in), self.eps(raw_0, z_in), x_in, z_in,
                                     s[ALPHA], s[SIGMA], self.g, self.wn, self.tau, self.phi)
        self.update(b.x, e)
        self.update(b.z, e_dns)


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
    """``sampler.sample`` with each step replayed from a graph (same equations, same
    result). With a ``cache`` kept across calls, graphs and buffers are reused."""
    rule = make_step_rule(scheduler, steps)
    if not isinstance(rule, LinearStepRule) or not supports(guidance, rule):
        raise ValueError("graphed sampling needs DDIM or Euler and a method other than ANSWER's inner mode")
    cache = cache if cache is not None else GraphCache(EagerCapturer())
    buffers = cache.static_buffers((noise.to(torch.float32) * rule.init_noise_sigma).contiguous(), cond)
    step = GraphedStep(denoiser, buffers, guidance, prediction_type)
    table = step_table(rule, buffers.x.device)
    anchored = anchored_steps(rule.sigmas, guidance.dns_steps, guidance.chain_min_sigma)
    for i in range(len(rule.timesteps)):
        buffers.row.copy_(table[i])
        two_rows = guidance.method != "answer" or anchored[i]
        kind, function = ("two", step.two_row_step) if two_rows else ("three", step.three_row_step)
        cache.get(kind, step.key(), function, state=(buffers.x, buffers.z))()
        if callback is not None:
            callback(i, len(rule.timesteps))
    return buffers.x.clone()  # the buffer is the next call's: hand out a copy
