"""A whole denoising step as a replayable graph: fused UNet call + guidance + scheduler
update, on static device buffers, for CUDA-graph capture.

Every per-step number the step needs (noise levels, input scale, update coefficients,
timestep) is read from a device table row copied into a static buffer before each
replay, so one captured graph serves every step of its kind. The method's guider
(``answer_trt.guiders``) says which kind each step is, what the step computes
(``Guider.graph_step``, on the ``GraphIO`` that ``GraphedStep`` gives it) and whether
it can be captured at all (``Guider.graph_refusal``): ANSWER in parallel mode has two
kinds (re-anchor steps: z <- x and a 2-row call; other steps: a 3-row call), CFG and
DNS have one. Needs a ``LinearStepRule`` scheduler (DDIM, Euler) and a denoiser that
can be captured (no host synchronization).

A ``GraphCache`` (one per ``Pipeline``) owns the static buffers a step reads and
writes: the latents x and z, the step row, and the stacked conditions, one set per
shape, into which each call copies its noise and its prompt's conditions. With
ControlNets (``answer_trt.controlnet.ControlledDenoiser``) the conditions' control
images, scales, guidance windows and guess-mode flags are static buffers too, so the
ControlNets' calls and the residuals they feed the UNet are inside the captured step. A graph's
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
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from answer_trt.conditioning import Conditioning, TextCondition, cat_conditions
from answer_trt.config import GuidanceConfig
from answer_trt.guidance import output_offset
from answer_trt.guiders import Guider, make_guider
from answer_trt.sampler import Denoiser, StepCallback
from answer_trt.schedulers import LinearStepRule, is_stochastic, make_step_rule

# Columns of the per-step table.
ALPHA, SIGMA, INPUT_SCALE, X_COEF, EPS_COEF, TIMESTEP = range(6)

Replay = Callable[[], None]
# The ControlNets' per-row inputs of a condition (``TextCondition.control*``), read by the denoiser.
CONTROL_FIELDS = ("control", "control_scale", "control_window", "control_guess")


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
    1-row call ``(c_p)`` (guidance off), the 2-row call ``(c_p, c_0)`` and the 3-row call
    ``(c_p, c_p, c_0)``."""

    row: Tensor
    x: Tensor
    z: Tensor
    one: TextCondition
    two: TextCondition
    three: TextCondition

    @classmethod
    def like(cls, x: Tensor, cond: Conditioning) -> StepBuffers:
        def empty(c: TextCondition) -> TextCondition:
            grown = [None if t is None else torch.empty_like(t, device=x.device) for t in (c.pooled, c.time_ids)]
            base = TextCondition(torch.empty_like(c.hidden, device=x.device), *grown)
            return replace(base, **{name: torch.empty_like(t, device=x.device)
                                    for name, t in control_tensors(c).items()})

        row = torch.empty(TIMESTEP + 1, dtype=torch.float32, device=x.device)
        one, two, three = (cat_conditions(stack) for stack in _stacks(cond))
        return cls(row, torch.empty_like(x), torch.empty_like(x), empty(one), empty(two), empty(three))

    def load(self, x: Tensor, cond: Conditioning) -> None:
        """Copy a call's starting latents and conditions into the buffers."""
        self.x.copy_(x)
        for static, stack in zip((self.one, self.two, self.three), _stacks(cond)):
            for name, tensor in step_tensors(cat_conditions(stack)).items():
                step_tensors(static)[name].copy_(tensor)

    def addresses(self) -> tuple[int, ...]:
        conditions = (t for c in (self.one, self.two, self.three) for t in step_tensors(c).values())
        return tuple(t.data_ptr() for t in (self.row, self.x, self.z, *conditions))


def control_tensors(c: TextCondition) -> dict[str, Tensor]:
    """The ControlNets' inputs ``c`` carries (``CONTROL_FIELDS`` that are set), by field name."""
    return {name: t for name in CONTROL_FIELDS if (t := getattr(c, name)) is not None}


def step_tensors(c: TextCondition) -> dict[str, Tensor]:
    """Every tensor of ``c`` a step reads: the UNet's feeds (by IO name) and the ControlNets' inputs."""
    return {**c.feeds(), **control_tensors(c)}


def _stacks(cond: Conditioning) -> tuple[list[TextCondition], ...]:
    """The conditions of the 1-, 2- and 3-row calls, in row order."""
    c_p, c_0 = cond.positive, cond.negative
    return [c_p], [c_p, c_0], [c_p, c_p, c_0]


def buffer_signature(x: Tensor, cond: Conditioning) -> tuple[Any, ...]:
    """Shapes, dtypes and device of the buffers a call needs: equal signatures share buffers."""
    tensors = (x, *step_tensors(cond.positive).values(), *step_tensors(cond.negative).values())
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
    """Graphable: a linear step rule, and a method whose guider has no ``graph_refusal``
    (all but ANSWER's inner mode)."""
    return isinstance(rule, LinearStepRule) and make_guider(guidance).graph_refusal is None


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
        if is_stochastic(scheduler):
            return (f"--cuda-graph replays linear updates, and {name} draws fresh noise at every step (a stochastic "
                    "sampler): run without --cuda-graph, or pass --scheduler ddim or euler")
        return f"--cuda-graph needs --scheduler ddim or euler (this request uses {name})"
    return make_guider(guidance).graph_refusal


class GraphedStep:
    """A step as a function of the static buffers alone (what a graph captures): the
    ``GraphIO`` a guider's ``graph_step`` runs on, with the noise levels, input scale and
    update coefficients read from this step's table row as 0-d tensors."""

    def __init__(self, denoiser: Denoiser, buffers: StepBuffers, guider: Guider, prediction_type: str) -> None:
        self.denoiser, self.b, self.guider, self.prediction_type = denoiser, buffers, guider, prediction_type
        self.batch = buffers.x.shape[0]

    def key(self) -> Hashable:
        """Everything the captured step reads besides the buffers' contents (the guider
        holds the guidance constants baked into the graph)."""
        return (id(self.denoiser), self.guider, self.prediction_type, self.b.addresses())

    def function(self, kind: str) -> Callable[[], None]:
        """The step of ``kind`` as a function of no arguments (what the capturer records)."""

        def step() -> None:
            self.guider.graph_step(kind, self)

        step.__name__ = f"{kind}_step"
        return step

    @property
    def x(self) -> Tensor:
        return self.b.x

    @property
    def z(self) -> Tensor:
        return self.b.z

    @property
    def alpha(self) -> Tensor:
        return self.b.row[ALPHA]

    @property
    def sigma(self) -> Tensor:
        return self.b.row[SIGMA]

    def scale(self, latents: Tensor) -> Tensor:
        return latents * self.b.row[INPUT_SCALE]

    def call(self, latents: tuple[Tensor, ...]) -> list[Tensor]:
        """ONE denoiser call on 1 branch ``(c_p)``, 2 ``(c_p, c_0)`` or 3 ``(c_p, c_p, c_0)``;
        each branch's noise prediction (float32)."""
        cond = (self.b.one, self.b.two, self.b.three)[len(latents) - 1]
        n = len(latents)
        raw = self.denoiser(torch.cat(list(latents)), self.b.row[TIMESTEP].expand(n * self.batch), cond).chunk(n)
        return [self.eps(r, lat) for r, lat in zip(raw, latents)]

    def eps(self, raw: Tensor, x_in: Tensor) -> Tensor:
        raw = raw.to(torch.float32)
        if self.prediction_type == "epsilon":
            return raw
        s = self.b.row
        if self.prediction_type == "sample":  # x0-prediction (guidance.to_epsilon), with tensor levels
            return (x_in - s[ALPHA] * raw) / s[SIGMA]
        return s[ALPHA] * raw + s[SIGMA] * x_in  # v-prediction, with tensor levels

    def update(self, latents: Tensor, e: Tensor) -> None:
        s = self.b.row
        latents.copy_(latents * s[X_COEF] + e * s[EPS_COEF])

    def offset(self, x_in: Tensor) -> Any:
        return output_offset(x_in, self.b.row[ALPHA], self.b.row[SIGMA], self.prediction_type)


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
    guider = make_guider(guidance)
    if not isinstance(rule, LinearStepRule):
        raise ValueError("graphed sampling needs a linear step rule (DDIM or Euler)")
    if guider.graph_refusal is not None:
        raise ValueError(guider.graph_refusal)
    cache = cache if cache is not None else GraphCache(EagerCapturer())
    buffers = cache.static_buffers((noise.to(torch.float32) * rule.init_noise_sigma).contiguous(), cond)
    step = GraphedStep(denoiser, buffers, guider, prediction_type)
    table = step_table(rule, buffers.x.device)
    for i, kind in enumerate(guider.graph_kinds(rule.sigmas)):
        buffers.row.copy_(table[i])
        cache.get(kind, step.key(), step.function(kind), state=(buffers.x, buffers.z))()
        if callback is not None:
            callback(i, len(rule.timesteps))
    return buffers.x.clone()  # the buffer is the next call's: hand out a copy
