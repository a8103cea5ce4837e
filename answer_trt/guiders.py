"""One guider per guidance method (docs/ANSWER.md): what a step asks of the denoiser, and
how its outputs combine.

After diffusers' ``guiders/``: each class says how many rows (branches x images) each step
puts on the UNet's batch axis (``calls``: the serving batcher admits a request by its first
step's) and the most any step needs (``peak_rows``: beyond the batcher's rows per call a
request is refused), combines the UNet outputs with ``answer_trt.guidance``'s
float32 equations, and says whether its step can be captured as a CUDA graph
(``graph_refusal``: ``None``, or the one-line reason).

- ``CFG``: Eq. 1 (with the rescale of Eq. 7); one call on ``[(x, c_p), (x, c_0)]`` per step.
- ``DNS``: Eq. 2; the same call.
- ``Conditional``: guidance off (CFG and ANSWER at ``guidance_scale <= 1``, as diffusers):
  one call on ``[(x, c_p)]``.
- ``ParallelAnswer``: Eqs. 2, 4', 5 (variants 6, 7), a negative chain z beside x, re-anchored
  (z <- x) every ``anchor_period`` (K) steps and below ``chain_min_sigma``: one call per step,
  2 rows at an anchor, ``[(x, c_p), (z, c_p), (z, c_0)]`` (3 rows) between anchors.
- ``InnerAnswer``: Eqs. 2-5, up to ``iterations`` (K) DNS iterations run ahead of x at every
  step: up to K calls of 2 rows each. Not graphable (its calls per step vary).

Every guider also takes the variant "guidance interval" (``guidance_min_sigma``, after
Kynkäänniemi et al. 2024, "Applying guidance in a limited interval", here at the low-noise
end only): steps whose sigma_t is below it run ``Conditional``'s one-row step. The base
class applies it around each method's own ``guided_*`` methods, so a new method gets it
(and the batcher, the sampler and the graphed sampler see it) without a line of its own.

A guider runs its step two ways, both with the same combining function:
- as a program (``Guider.start``): a generator that yields the ``DenoiserCall`` of each
  denoiser call and is sent the outputs; ``answer_trt.sampler`` and the serving batcher
  answer it;
- on static buffers (``Guider.graph_step``, through the ``GraphIO`` that
  ``answer_trt.graphed`` provides), for the captured whole step.

``make_guider`` is the only place that maps a method name (and mode) to a class: no other
runtime module compares method names (tests/test_guiders.py checks).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from torch import Tensor

from answer_trt import guidance as G
from answer_trt.conditioning import Conditioning, TextCondition
from answer_trt.config import GuidanceConfig
from answer_trt.schedulers import StepRule


@dataclass(frozen=True)
class DenoiserCall:
    """What one denoiser call needs: branch i is ``latents[i]`` (each ``[B, C, h, w]``)
    conditioned on ``conds[i]``, all at timestep ``t`` (0-d)."""

    latents: tuple[Tensor, ...]
    conds: tuple[TextCondition, ...]
    t: Tensor

    @property
    def count(self) -> int:
        """Rows on the batch axis: branches x images."""
        return sum(int(lat.shape[0]) for lat in self.latents)


GuidedStep = Generator[DenoiserCall, list[Tensor], tuple[Tensor, dict[str, Any]]]
"""One step's guidance as a program: yields its denoiser calls, is sent their outputs (one
tensor per branch, in order), returns ``(e, what the probe sees)``; ``e`` is the guided
noise ``[B, C, h, w]`` float32 that the scheduler update takes."""

StepProgram = Callable[[int, Tensor, Tensor], GuidedStep]
"""``(i, x, x_in) -> GuidedStep``: step i's guidance for latents x (``x_in``: x scaled for
the UNet input)."""


@dataclass(frozen=True)
class StepContext:
    """What every step of one sampling run reads (the sampler makes one per run)."""

    rule: StepRule
    cond: Conditioning
    prediction_type: str
    timesteps: Tensor  # the rule's timesteps, float32 on the latents' device

    def eps_of(self, raw: Tensor, x_in: Tensor, alpha: float, sigma: float) -> Tensor:
        """The UNet output as a noise prediction (v-prediction converted, docs/ANSWER.md "Notation")."""
        if self.prediction_type == "epsilon":
            return raw
        return G.to_epsilon(raw, x_in, alpha, sigma, self.prediction_type)

    def offset(self, i: int, x_in: Tensor) -> Any:
        """Step i's ``guidance.output_offset`` at ``x_in`` (0 for epsilon prediction): what the
        rescale of Eq. 7 subtracts to work on the model's own output, as diffusers does."""
        alpha, sigma = self.rule.levels(i)
        return G.output_offset(x_in, alpha, sigma, self.prediction_type)

    def main_call(self, i: int, x_in: Tensor) -> Generator[DenoiserCall, list[Tensor], tuple[Tensor, Tensor]]:
        """Step i's call on ``[(x, c_p), (x, c_0)]``; returns ``(ep, e0)``."""
        alpha, sigma = self.rule.levels(i)
        raw_p, raw_0 = yield DenoiserCall((x_in, x_in), (self.cond.positive, self.cond.negative), self.timesteps[i])
        return self.eps_of(raw_p, x_in, alpha, sigma), self.eps_of(raw_0, x_in, alpha, sigma)


class GraphIO(Protocol):
    """The static buffers a captured step reads and writes (``answer_trt.graphed.GraphedStep``):
    ``x`` and ``z`` are the latents and the negative chain, ``[B, C, h, w]`` float32;
    ``alpha`` and ``sigma`` are this step's noise levels as 0-d tensors (read from a table
    at each replay, so one graph serves every step of its kind)."""

    @property
    def x(self) -> Tensor: ...

    @property
    def z(self) -> Tensor: ...

    @property
    def alpha(self) -> Tensor: ...

    @property
    def sigma(self) -> Tensor: ...

    def scale(self, latents: Tensor) -> Tensor:
        """The scheduler's input scaling of ``latents`` at this step."""
        ...

    def call(self, latents: tuple[Tensor, ...]) -> list[Tensor]:
        """ONE denoiser call on 1 branch ``(c_p)``, 2 ``(c_p, c_0)`` or 3 ``(c_p, c_p, c_0)``;
        the noise prediction (float32) of each branch."""
        ...

    def update(self, latents: Tensor, e: Tensor) -> None:
        """The scheduler update of ``latents`` (a buffer) with the guided noise ``e``, in place."""
        ...

    def offset(self, x_in: Tensor) -> Any:
        """This step's ``guidance.output_offset`` at ``x_in`` (0 for epsilon prediction)."""
        ...


def anchored_steps(sigmas: Sequence[float], k: int, chain_min_sigma: float = 0.0) -> list[bool]:
    """Which steps re-anchor ANSWER's parallel negative chain (z <- x): every K-th step, and
    every step whose noise level sigma_t is below ``chain_min_sigma`` (docs/ANSWER.md,
    variant "interval"); at those steps ANSWER in parallel mode equals CFG."""
    return [i % k == 0 or sigma < chain_min_sigma for i, sigma in enumerate(sigmas)]


@dataclass(frozen=True)
class Guider(ABC):
    """One guidance method, set up by a validated ``GuidanceConfig``.

    ``peak_rows_per_image``: the most rows any denoiser call of a step puts on the batch
    axis per image. ``graph_refusal``: ``None`` where the step can be captured as a CUDA
    graph (given a linear step rule, ``answer_trt.graphed``), else the one-line reason.
    """

    config: GuidanceConfig
    peak_rows_per_image: ClassVar[int]
    graph_refusal: ClassVar[str | None] = None
    reads_negative: ClassVar[bool] = True  # whether c_0 (or a negative prompt's condition) is used

    @property
    def guidance_scale(self) -> float:
        """w (Eqs. 1 and 5)."""
        return self.config.guidance_scale

    @property
    def negative_scale(self) -> float:
        """wn (Eq. 2), resolved: the request's, or the method's default (docs/ANSWER.md "Defaults")."""
        return self.config.wn

    @property
    def guidance_rescale(self) -> float:
        """phi of the rescale variant (Eq. 7); 0 leaves the guided noise as it is."""
        return self.config.guidance_rescale

    def rescale_offset(self, offset: Callable[[], Any]) -> Any:
        """What the rescale of Eq. 7 subtracts (``offset()``: the step's ``output_offset``), made
        only where phi > 0: a step without rescale computes nothing more (0)."""
        return offset() if self.guidance_rescale else 0.0

    def peak_rows(self, batch: int) -> int:
        """The most rows one denoiser call of this method puts on the batch axis for ``batch`` images."""
        return self.peak_rows_per_image * batch

    def guided(self, sigma: float) -> bool:
        """Whether a step at noise level ``sigma`` (sigma_t) is guided: always, unless it is
        below ``guidance_min_sigma`` (variant "guidance interval"), where every method runs
        the conditional prediction alone (one row, ``Conditional``'s step)."""
        return sigma >= self.config.interval_min_sigma

    def calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        """For each step (``sigmas``: its noise levels sigma_t), the rows per image of each of
        its denoiser calls, in order."""
        own = self.guided_calls(sigmas)
        return [calls if self.guided(sigma) else (1,) for sigma, calls in zip(sigmas, own)]

    def start(self, context: StepContext, probing: bool = False) -> StepProgram:
        """The step program of one sampling run (a guider with state across steps keeps it
        in the returned program). ``probing``: also return what ``sample``'s probe shows."""
        guided = self.guided_start(context, probing)
        if self.config.interval_min_sigma <= 0.0:
            return guided
        sigmas = [context.rule.levels(i)[1] for i in range(len(context.rule.timesteps))]

        def step(i: int, x: Tensor, x_in: Tensor) -> GuidedStep:
            if self.guided(sigmas[i]):
                return (yield from guided(i, x, x_in))
            return (yield from _conditional_step(context, i, x, x_in))

        return step

    def graph_kinds(self, sigmas: Sequence[float]) -> list[str]:
        """For each step, the kind of captured step it replays (one graph per kind)."""
        if self.graph_refusal is not None:
            raise ValueError(self.graph_refusal)
        own = self.guided_graph_kinds(sigmas)
        return [kind if self.guided(sigma) else UNGUIDED for sigma, kind in zip(sigmas, own)]

    def graph_step(self, kind: str, io: GraphIO) -> None:
        """One step of ``kind`` on the static buffers of ``io`` (what a graph captures)."""
        if kind == UNGUIDED:
            _conditional_graph_step(io)
        else:
            self.guided_graph_step(kind, io)

    @abstractmethod
    def guided_calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        """``calls`` where every step is guided."""

    @abstractmethod
    def guided_start(self, context: StepContext, probing: bool) -> StepProgram:
        """``start`` where every step is guided."""

    def guided_graph_kinds(self, sigmas: Sequence[float]) -> list[str]:
        """``graph_kinds`` where every step is guided."""
        raise ValueError(self.graph_refusal)

    def guided_graph_step(self, kind: str, io: GraphIO) -> None:
        """A guided step of ``kind`` on ``io``'s buffers."""
        raise ValueError(self.graph_refusal)


# The kind of captured step that runs the conditional prediction alone (guidance off).
UNGUIDED = "unguided"


def _conditional_step(context: StepContext, i: int, x: Tensor, x_in: Tensor) -> GuidedStep:
    """Guidance off at step i: ``e = ep``, one row ``(x, c_p)``."""
    alpha, sigma = context.rule.levels(i)
    (raw_p,) = yield DenoiserCall((x_in,), (context.cond.positive,), context.timesteps[i])
    ep = context.eps_of(raw_p, x_in, alpha, sigma)
    return ep, {"ep": ep}


def _conditional_graph_step(io: GraphIO) -> None:
    x_in = io.scale(io.x)
    (ep,) = io.call((x_in,))
    io.update(io.x, ep)


@dataclass(frozen=True)
class TwoRowGuider(Guider):
    """A method whose step is one call on ``[(x, c_p), (x, c_0)]`` and a function of
    ``(ep, e0)`` alone: one kind of captured step."""

    peak_rows_per_image: ClassVar[int] = 2

    @abstractmethod
    def combine(self, ep: Tensor, e0: Tensor, offset: Any = 0.0) -> Tensor:
        """The guided noise ``[B, C, h, w]`` float32 from ``ep`` and ``e0`` (each ``[B, C, h, w]``);
        ``offset``: the step's ``guidance.output_offset`` (for the rescale of Eq. 7)."""

    def guided_calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        return [(2,)] * len(sigmas)

    def guided_start(self, context: StepContext, probing: bool) -> StepProgram:
        return functools.partial(self._step, context)

    def _step(self, context: StepContext, i: int, x: Tensor, x_in: Tensor) -> GuidedStep:
        ep, e0 = yield from context.main_call(i, x_in)
        return self.combine(ep, e0, self.rescale_offset(lambda: context.offset(i, x_in))), {"ep": ep}

    def guided_graph_kinds(self, sigmas: Sequence[float]) -> list[str]:
        return ["step"] * len(sigmas)

    def guided_graph_step(self, kind: str, io: GraphIO) -> None:
        x_in = io.scale(io.x)
        ep, e0 = io.call((x_in, x_in))
        io.update(io.x, self.combine(ep, e0, self.rescale_offset(lambda: io.offset(x_in))))


@dataclass(frozen=True)
class CFG(TwoRowGuider):
    """Classifier-free guidance, Eq. 1 ``e = e0 + w (ep - e0)``, then the rescale of Eq. 7."""

    def combine(self, ep: Tensor, e0: Tensor, offset: Any = 0.0) -> Tensor:
        return G.rescale(G.cfg(e0, ep, self.guidance_scale), ep, self.guidance_rescale, offset)


@dataclass(frozen=True)
class DNS(TwoRowGuider):
    """Diffusion-negative sampling, Eq. 2 ``e = e0 + wn (e0 - ep)``: CFG with the branches swapped."""

    def combine(self, ep: Tensor, e0: Tensor, offset: Any = 0.0) -> Tensor:
        return G.dns(e0, ep, self.negative_scale)


@dataclass(frozen=True)
class Conditional(Guider):
    """Guidance off: the conditional prediction alone, ``e = ep``, one row ``(x, c_p)`` per
    step. What CFG and ANSWER run at ``guidance_scale <= 1``, as diffusers' pipelines do
    (their ``do_classifier_free_guidance`` is ``guidance_scale > 1``); c_0 and a negative
    prompt are not read (docs/ANSWER.md "Guidance below 1")."""

    peak_rows_per_image: ClassVar[int] = 1
    reads_negative: ClassVar[bool] = False

    def guided_calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        return [(1,)] * len(sigmas)

    def guided_start(self, context: StepContext, probing: bool) -> StepProgram:
        return functools.partial(_conditional_step, context)

    def guided_graph_kinds(self, sigmas: Sequence[float]) -> list[str]:
        return [UNGUIDED] * len(sigmas)

    def guided_graph_step(self, kind: str, io: GraphIO) -> None:
        _conditional_graph_step(io)


@dataclass(frozen=True)
class ParallelAnswer(Guider):
    """ANSWER in parallel mode (docs/ANSWER.md "Modes"): the negative chain z runs beside x
    on the same timesteps and is re-anchored (z <- x, with the scheduler state) at the
    anchored steps (``anchored_steps``); one call per step: 2 rows at an anchor (where
    ``(z, c_p)`` would repeat ``(x, c_p)``), 3 otherwise. x advances with Eq. 5 on Eq. 4'
    (fade Eq. 6, rescale Eq. 7), z with Eq. 2."""

    peak_rows_per_image: ClassVar[int] = 3
    ANCHOR: ClassVar[str] = "anchor"  # a captured re-anchor step (2 rows)
    CHAIN: ClassVar[str] = "chain"  # a captured step between anchors (3 rows)

    @property
    def anchor_period(self) -> int:
        """K: the chain is re-anchored every K steps, so a negative is built from at most K DNS steps."""
        return self.config.dns_steps

    @property
    def answer_scale(self) -> float:
        """g = (w + wn) / (1 + wn), Eq. 5's normalized scale."""
        return G.answer_scale(self.guidance_scale, self.negative_scale)

    def anchored(self, sigmas: Sequence[float]) -> list[bool]:
        """Which steps re-anchor the chain (``sigmas``: each step's sigma_t)."""
        return anchored_steps(sigmas, self.anchor_period, self.config.chain_min_sigma)

    def guided_calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        return [(2,) if anchored else (3,) for anchored in self.anchored(sigmas)]

    def combine(self, ep: Tensor, ep_z: Tensor, e0_z: Tensor, x_in: Tensor, z_in: Tensor, alpha: Any,
                sigma: Any, offset: Any = 0.0) -> tuple[Tensor, Tensor]:
        """``(e_ans, e_dns)`` (``guidance.parallel_answer``): x advances with the first, z
        with the second. Every tensor ``[B, C, h, w]``; at an anchor ``z_in is x_in`` and
        ``ep_z is ep``. ``alpha``, ``sigma``: floats, or 0-d tensors on a captured step;
        ``offset``: x's ``guidance.output_offset``."""
        return G.parallel_answer(ep, ep_z, e0_z, x_in, z_in, alpha, sigma, self.answer_scale, self.negative_scale,
                                 self.config.drift_tau, self.guidance_rescale, offset)

    def guided_start(self, context: StepContext, probing: bool) -> StepProgram:
        return _NegativeChain(self, context, probing).guide

    def guided_graph_kinds(self, sigmas: Sequence[float]) -> list[str]:
        return [self.ANCHOR if anchored else self.CHAIN for anchored in self.anchored(sigmas)]

    def guided_graph_step(self, kind: str, io: GraphIO) -> None:
        if kind == self.ANCHOR:
            io.z.copy_(io.x)
            x_in = io.scale(io.x)
            ep, e0 = io.call((x_in, x_in))
            offset = self.rescale_offset(lambda: io.offset(x_in))
            e, e_dns = self.combine(ep, ep, e0, x_in, x_in, io.alpha, io.sigma, offset)  # z == x
        else:
            x_in, z_in = io.scale(io.x), io.scale(io.z)
            ep, ep_z, e0_z = io.call((x_in, z_in, z_in))
            offset = self.rescale_offset(lambda: io.offset(x_in))
            e, e_dns = self.combine(ep, ep_z, e0_z, x_in, z_in, io.alpha, io.sigma, offset)
        io.update(io.x, e)
        io.update(io.z, e_dns)


class _NegativeChain:
    """One sampling run of ``ParallelAnswer``: the chain z and its own scheduler state."""

    def __init__(self, guider: ParallelAnswer, context: StepContext, probing: bool) -> None:
        self.guider, self.context, self.probing = guider, context, probing
        rule = context.rule
        self.anchored = guider.anchored([rule.levels(i)[1] for i in range(len(rule.timesteps))])
        self.z: Tensor | None = None
        self.rule_z = rule

    def guide(self, i: int, x: Tensor, x_in: Tensor) -> GuidedStep:
        context, rule = self.context, self.context.rule
        alpha, sigma = rule.levels(i)
        c_p, c_0, t = context.cond.positive, context.cond.negative, context.timesteps[i]
        if self.anchored[i]:
            self.z, self.rule_z = x, rule.fork()
            raw_p, raw_0 = yield DenoiserCall((x_in, x_in), (c_p, c_0), t)
            z_in = x_in
            ep = ep_z = context.eps_of(raw_p, x_in, alpha, sigma)
        else:
            assert self.z is not None  # step 0 is always anchored
            z_in = self.rule_z.scale_input(self.z, i)
            raw_p, raw_pz, raw_0 = yield DenoiserCall((x_in, z_in, z_in), (c_p, c_p, c_0), t)
            ep, ep_z = context.eps_of(raw_p, x_in, alpha, sigma), context.eps_of(raw_pz, z_in, alpha, sigma)
        e, e_dns = self.guider.combine(ep, ep_z, context.eps_of(raw_0, z_in, alpha, sigma), x_in, z_in, alpha, sigma,
                                       self.guider.rescale_offset(lambda: context.offset(i, x_in)))
        if i + 1 < len(self.anchored) and not self.anchored[i + 1]:  # z is re-anchored (or unused) otherwise
            assert self.z is not None
            self.z = self.rule_z.step(e_dns, i, self.z)
        if not self.probing:
            return e, {}
        return e, {"ep": ep, "z_in": z_in, "anchored": self.anchored[i],
                   "e_neg": G.parallel_negative(e_dns, x_in, z_in, alpha, sigma, self.guider.config.drift_tau)}


@dataclass(frozen=True)
class InnerAnswer(Guider):
    """ANSWER in inner mode (docs/ANSWER.md "Modes"): at every step z starts at x and runs up
    to ``iterations`` (K) DNS steps (Eq. 2) ahead on the step grid, each a 2-row call (the
    first is the main call); xneg0 (Eq. 3) of the last gives e_neg (Eq. 4), and x advances
    with Eq. 5 (rescale Eq. 7). Below ``chain_min_sigma`` a step uses one iteration (CFG)."""

    peak_rows_per_image: ClassVar[int] = 2
    graph_refusal: ClassVar[str | None] = (
        "--cuda-graph runs ANSWER in --mode parallel only: pass --mode parallel, or run without --cuda-graph")

    @property
    def iterations(self) -> int:
        """K: the DNS iterations run ahead of x at each step (fewer near the end of the grid)."""
        return self.config.dns_steps

    @property
    def answer_scale(self) -> float:
        """g = (w + wn) / (1 + wn), Eq. 5's normalized scale."""
        return G.answer_scale(self.guidance_scale, self.negative_scale)

    def iterations_at(self, i: int, sigmas: Sequence[float]) -> int:
        """The DNS iterations (= denoiser calls) of step i: K, one below ``chain_min_sigma``
        (variant "interval"), and no more than the steps left."""
        wanted = 1 if sigmas[i] < self.config.chain_min_sigma else self.iterations
        return min(wanted, len(sigmas) - i)

    def guided_calls(self, sigmas: Sequence[float]) -> list[tuple[int, ...]]:
        return [(2,) * self.iterations_at(i, sigmas) for i in range(len(sigmas))]

    def guided_start(self, context: StepContext, probing: bool) -> StepProgram:
        rule = context.rule
        sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
        return functools.partial(self._step, context, sigmas)

    def _step(self, context: StepContext, sigmas: list[float], i: int, x: Tensor, x_in: Tensor) -> GuidedStep:
        alpha, sigma = context.rule.levels(i)
        ep, e0 = yield from context.main_call(i, x_in)
        xneg0 = yield from self._negative(context, i, x, x_in, ep, e0, self.iterations_at(i, sigmas))
        e_neg = G.negative_noise(x_in, xneg0, alpha, sigma)
        offset = self.rescale_offset(lambda: context.offset(i, x_in))
        e = G.rescale(G.answer(e_neg, ep, self.answer_scale), ep, self.guidance_rescale, offset)
        return e, {"ep": ep, "e_neg": e_neg, "anchored": True}

    def _negative(self, context: StepContext, i: int, x: Tensor, x_in: Tensor, ep: Tensor, e0: Tensor,
                  iterations: int) -> Generator[DenoiserCall, list[Tensor], Tensor]:
        """From z = x, ``iterations`` DNS steps on the step grid; returns xneg0 (Eq. 3) of the
        last one. The first reuses the main call's ``ep``/``e0`` on x."""
        rule, wn = context.rule, self.negative_scale
        e_dns = G.dns(e0, ep, wn)
        xneg0 = G.tweedie_x0(x_in, e_dns, *rule.levels(i))
        if iterations == 1:
            return xneg0
        rule_z = rule.fork()
        z = x
        conds = (context.cond.positive, context.cond.negative)
        for j in range(i + 1, i + iterations):
            z = rule_z.step(e_dns, j - 1, z)
            alpha_j, sigma_j = rule_z.levels(j)
            z_in = rule_z.scale_input(z, j)
            raw_p, raw_0 = yield DenoiserCall((z_in, z_in), conds, context.timesteps[j])
            e_dns = G.dns(context.eps_of(raw_0, z_in, alpha_j, sigma_j), context.eps_of(raw_p, z_in, alpha_j, sigma_j),
                          wn)
            xneg0 = G.tweedie_x0(z_in, e_dns, alpha_j, sigma_j)
        return xneg0


# The one place a method name (and, for ANSWER, its mode) is mapped to a guider class.
GUIDERS: dict[str, type[Guider] | dict[str, type[Guider]]] = {
    "cfg": CFG,
    "dns": DNS,
    "answer": {"parallel": ParallelAnswer, "inner": InnerAnswer},
}


# Methods guided by w that turn guidance off at w <= 1, as diffusers does for CFG (ANSWER's
# Eq. 5 gives e = ep at w = 1 anyway; DNS is steered by wn alone and runs as defined).
GUIDANCE_OFF_AT_OR_BELOW_1 = ("cfg", "answer")


def make_guider(guidance: GuidanceConfig) -> Guider:
    """The guider of ``guidance``'s method (and mode, for a method that has modes);
    ``Conditional`` for CFG and ANSWER at ``guidance_scale <= 1``."""
    if guidance.method in GUIDANCE_OFF_AT_OR_BELOW_1 and guidance.guidance_scale <= 1.0:
        return Conditional(guidance)
    entry = GUIDERS.get(guidance.method)
    guider = entry.get(guidance.mode) if isinstance(entry, dict) else entry
    if guider is None:
        raise ValueError(f"no guider for method {guidance.method!r} in mode {guidance.mode!r}: add one to "
                         "answer_trt.guiders.GUIDERS")
    return guider(guidance)
