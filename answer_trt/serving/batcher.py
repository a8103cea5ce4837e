"""Step-level batching across requests: one UNet call per step for every request in flight.

Every row of a UNet call carries its own latents, timestep and text condition, so
requests at different steps, with different methods, can share a call: the three
rows of an ANSWER step of request A, the two CFG rows of request B and the rows of C,
which has just arrived, go through the engine together (iteration-level scheduling,
as LLM servers do it, with diffusion steps as the iterations).

Each request runs the sampler's own loop (``answer_trt.sampler.sampling_program``), which yields
the rows of each call instead of making it; the batcher answers many programs with one call per
group, so a request's latents are those of ``Pipeline.generate`` for the same request and seed
(up to the engine's batch-size rounding). Rows of one call share the latent size and the text
conditions' length (a long prompt in A1111's syntax takes more chunks: it is grouped with its
like), and requests with ControlNet control images share calls with each other alone (each row
carries its own control image, scale, window and guess mode). Requests join a running set when
the engine's batch axis has room for the rows the set's steps need now, the newcomer's first
call included (strictly oldest first, so nothing starves): an ANSWER request's re-anchor steps,
and those below its chain's interval, take 2 rows, its other steps 3, as its guider says (not
its peak of 3 throughout). Each iteration makes one UNet call per key (latent shape, text
length), filled oldest first with the requests whose next call fits; when the set's steps have
grown past the axis (2-row steps turning into 3-row ones), the requests left out wait an
iteration rather than add a part-empty call. Finished requests are decoded together.

Parts: the pure decisions (who joins, which rows make a call) are
``answer_trt.serving.admission``; tickets, deadlines and cancellation are
``answer_trt.serving.tickets``; counters are ``answer_trt.serving.stats``; a request's own
steps (plan, prepare, program, decode, finish) are ``Pipeline``'s, as in ``generate``.
This module is the worker that runs them. No serving framework in here:
``answer_trt.serving.app`` puts this behind Ray Serve.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from answer_trt.conditioning import cat_conditions
from answer_trt.config import SamplingConfig
from answer_trt.controlnet import ControlImages
from answer_trt.errors import UserInputError
from answer_trt.guiders import DenoiserCall, make_guider
from answer_trt.img2img import InitImage
from answer_trt.iospec import MAX_BRANCHES
from answer_trt.pipeline import Generation, Limits, Pipeline, RequestPlan, Timings
from answer_trt.rules import check_int
from answer_trt.sampler import SamplingProgram
from answer_trt.schedulers import StepRule
from answer_trt.schema import GenerateRequest
from answer_trt.serving.admission import admit, call_timesteps, decode_chunks, fill, group
from answer_trt.serving.stats import BatcherStats, Progress, RequestProgress, StatsRecorder
from answer_trt.serving.tickets import DeadlineExceeded, QueueFullError, RequestCancelled, Ticket

__all__ = ["DeadlineExceeded", "GenerateRequest", "Progress", "QueueFullError", "RequestCancelled", "StepBatcher",
           "Ticket", "call_rows", "check_max_rows", "peak_rows", "step_calls"]

# Rows per call when the engines set no limit (the torch backend).
UNLIMITED_ENGINE_ROWS = 48


@dataclass(frozen=True)
class _Waiting:
    """A submitted request: its ticket, its plan (``Pipeline.plan``, made at submit), what
    must agree to share a call with it (``key``: the latent shape), the rows of its first
    call (what it needs to join) and the calls its steps end at (``step_ends``, cumulative:
    its progress in steps)."""

    ticket: Ticket
    plan: RequestPlan
    key: tuple[int, ...]
    first_rows: int
    step_ends: tuple[int, ...]
    init: InitImage | None = None  # img2img / inpainting: the input image (and mask) the request names
    control: ControlImages | None = None  # ControlNet: the control images the request names


@dataclass
class _Job:
    """An admitted request: its program, the rows it waits on, and its bookkeeping."""

    waiting: _Waiting
    program: SamplingProgram
    started: float
    text_s: float
    pending: DenoiserCall | None = None
    latents: Tensor | None = None
    calls_done: int = 0

    @property
    def ticket(self) -> Ticket:
        return self.waiting.ticket

    @property
    def steps_done(self) -> int:
        return bisect.bisect_right(self.waiting.step_ends, self.calls_done)

    def advance(self, outputs: list[Tensor]) -> None:
        self.calls_done += 1
        try:
            self.pending = self.program.send(outputs)
        except StopIteration as done:
            self.pending, self.latents = None, done.value


def peak_rows(config: SamplingConfig) -> int:
    """The most rows one denoiser call of this request puts on the batch axis (its method's
    guider says: ``answer_trt.guiders``); a request above ``max_rows`` is refused."""
    return make_guider(config.guidance).peak_rows(config.batch)


def call_rows(config: SamplingConfig, rule: StepRule) -> list[int]:
    """The rows of each denoiser call of this request, in order: its method's guider says
    per step (``Guider.calls`` on the rule's noise levels), times its images."""
    sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
    return [rows * config.batch for step in make_guider(config.guidance).calls(sigmas) for rows in step]


def step_calls(config: SamplingConfig, rule: StepRule) -> list[int]:
    """The denoiser calls of each step of this request, in order (``call_rows`` per step)."""
    sigmas = [rule.levels(i)[1] for i in range(len(rule.timesteps))]
    return [len(step) for step in make_guider(config.guidance).calls(sigmas)]


def check_max_rows(max_rows: int | None, limits: Limits) -> int:
    """Rows per batched UNet call: ``max_rows``, checked against the engines' batch axis
    (``MAX_BRANCHES`` rows per image of ``--max-batch``), or all of that axis."""
    built = UNLIMITED_ENGINE_ROWS if limits.max_batch is None else MAX_BRANCHES * limits.max_batch
    if max_rows is None:
        return built
    check_int("max-rows", max_rows)
    if max_rows < 2:
        raise UserInputError(f"max-rows must be at least 2 (a CFG step's two rows), got {max_rows}")
    if max_rows > built:
        raise UserInputError(
            f"max-rows {max_rows} is beyond the {built} rows per call the engines were built for: use "
            f"--max-rows {built} or fewer, or rebuild with "
            f"`{limits.rebuild_command(max_batch=math.ceil(max_rows / MAX_BRANCHES))}`"
        )
    return max_rows


class StepBatcher:
    """Runs submitted requests on ``pipeline`` with one UNet call per step across requests.

    ``max_rows``: rows per UNet call (default: what the engines were built for).
    ``batching=False`` runs one request at a time (the baseline the batching is measured
    against). ``max_queue``: requests waiting to join beyond which ``submit`` raises
    ``QueueFullError``. A worker thread does all the engine work; ``close`` stops it.
    """

    def __init__(
        self, pipeline: Pipeline, *, max_rows: int | None = None, batching: bool = True, max_queue: int | None = None
    ) -> None:
        self.max_rows = check_max_rows(max_rows, pipeline.limits)
        self.max_queue = None if max_queue is None else check_int("max-queue", max_queue)
        self.pipeline = pipeline
        self.batching = batching
        self._wake = threading.Condition()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._active: list[_Job] = []
        self._closed = False
        self._stats = StatsRecorder(time.monotonic())
        self._worker = threading.Thread(target=self._run, name="answer-trt-batcher", daemon=True)
        self._worker.start()

    # -- the caller's side -------------------------------------------------------------

    def submit(self, request: GenerateRequest, *, deadline_s: float | None = None,
               init: InitImage | None = None, control: ControlImages | None = None) -> Ticket:
        """Validate ``request`` (``UserInputError`` with the CLI's messages) and queue it.
        ``deadline_s``: seconds from now by which it must finish, or it ends with
        ``DeadlineExceeded``. ``init``: the input image (and mask) of an img2img or inpainting
        request (``Pipeline.run``'s); its calls share UNet calls with text-to-image requests of
        the same latent shape. ``control``: its ControlNets' images (``Pipeline.run``'s); a control
        request shares UNet calls with control requests alone (``_key``). The ticket's future ends
        with a ``Generation``."""
        if not isinstance(request, GenerateRequest):
            raise UserInputError(f"expected a GenerateRequest, got {type(request).__name__}")
        plan = self.pipeline.plan(request, init, control=control)
        rows = peak_rows(plan.config)
        if rows > self.max_rows:
            raise UserInputError(f"this request needs {rows} rows per call but the batcher takes "
                                 f"{self.max_rows}: raise --max-rows")
        if deadline_s is not None and (isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float))
                                       or not math.isfinite(deadline_s) or deadline_s <= 0):
            raise UserInputError(f"timeout must be a positive number of seconds, got {deadline_s!r}")
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                raise QueueFullError(len(self._waiting),
                                     self._stats.retry_after(len(self._active), len(self._waiting)))
            ticket = Ticket(request, None if deadline_s is None else time.monotonic() + deadline_s, self._wake)
            ends = tuple(itertools.accumulate(step_calls(plan.config, plan.rule)))
            self._waiting.append(_Waiting(ticket, plan, self._key(plan, control), call_rows(plan.config, plan.rule)[0],
                                          ends, init, control))
            self._wake.notify_all()
        return ticket

    def generate(self, request: GenerateRequest, timeout: float | None = None,
                 init: InitImage | None = None, control: ControlImages | None = None) -> Generation:
        """Submit and wait."""
        result: Generation = self.submit(request, deadline_s=timeout, init=init, control=control).result()
        return result

    def stats(self) -> BatcherStats:
        with self._wake:
            return self._stats.snapshot(time.monotonic(), queue_length=len(self._waiting), active=len(self._active),
                                        max_rows=self.max_rows, batching=self.batching)

    def progress(self) -> Progress:
        """The requests held now: each in flight with its steps done, each waiting with none."""
        now = time.monotonic()
        with self._wake:
            running = tuple(RequestProgress(job.steps_done, len(job.waiting.step_ends), now - job.ticket.submitted)
                            for job in self._active)
            waiting = tuple(RequestProgress(0, len(w.step_ends), now - w.ticket.submitted) for w in self._waiting)
        return Progress(running, waiting)

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop the worker; requests not finished end with ``RequestCancelled``. Waits up to
        ``timeout`` seconds for an engine call in progress (the worker thread is a daemon)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> StepBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._active:
                    self._wake.wait()
                if self._closed:
                    break
                self._drop_ended()
                joining = self._take_joining()
            try:
                with self.pipeline.on_stream():
                    self._iterate(joining)
            except Exception as exc:  # noqa: BLE001 - a failed iteration fails its requests, not the server
                with self._wake:
                    failed, self._active = self._active, []
                for job in failed:
                    self._fail(job.ticket, exc)
        with self._wake:
            ended = [w.ticket for w in self._waiting] + [j.ticket for j in self._active]
            self._waiting.clear()
            self._active = []
        for ticket in ended:
            ticket.end(RequestCancelled("the server is shutting down"))

    def _drop_ended(self) -> None:
        """Remove cancelled and expired requests, waiting or in flight (under the lock)."""
        now = time.monotonic()

        def ended(ticket: Ticket) -> bool:
            why = ticket.ending(now)
            if why is not None:
                self._stats.count("cancelled" if isinstance(why, RequestCancelled) else "expired")
                ticket.end(why)
            return why is not None

        self._waiting = collections.deque(w for w in self._waiting if not ended(w.ticket))
        self._active = [job for job in self._active if not ended(job.ticket)]

    def _take_joining(self) -> list[_Waiting]:
        """The waiting requests whose first call fits beside the calls those in flight make
        now (their pending calls: the rows their steps need this iteration, not their peaks;
        ``admission.admit``; under the lock)."""
        now = ((job.waiting.key, 0 if job.pending is None else job.pending.count) for job in self._active)
        taken = admit(now, [(w.key, w.first_rows) for w in self._waiting], self.max_rows if self.batching else 0)
        return [self._waiting.popleft() for _ in range(taken)]

    def _key(self, plan: RequestPlan, control: ControlImages | None = None) -> tuple[int, ...]:
        """What requests sharing a UNet call must agree on: the latent size, the text
        conditions' chunks (A1111's long prompts: rows of other text lengths cannot be stacked;
        padding them with empty chunks would change their images from ``generate``'s), and
        whether they have control images. Control requests share calls whatever their images,
        scales, guidance windows and guess mode (each row carries its own: ``TextCondition.control*``,
        read row by row by ``controlnet.ControlledDenoiser``); a request without control does not
        join them (its rows would need zero residuals, not the ControlNets' call)."""
        config = plan.config
        assert config.height is not None and config.width is not None  # resolved by Pipeline.plan
        factor = self.pipeline.dims.vae_scale_factor
        return (config.height // factor, config.width // factor, plan.text_chunks, int(control is not None))

    def _iterate(self, joining: list[_Waiting]) -> None:
        for waiting in joining:
            self._join(waiting)
        active = self._active
        for indices in group([job.waiting.key for job in active]):
            jobs = [active[i] for i in indices]
            pending = [None if job.pending is None else job.pending.count for job in jobs]
            chosen = fill(pending, self.max_rows)
            if chosen:
                self._call([jobs[i] for i in chosen])
        finished = [job for job in self._active if job.latents is not None]
        if finished:
            with self._wake:
                self._active = [job for job in self._active if job.latents is None]
            for indices in group([job.waiting.key[:2] for job in finished]):  # the latent size alone
                self._decode([finished[i] for i in indices])

    def _join(self, waiting: _Waiting) -> None:
        request, plan = waiting.ticket.request, waiting.plan
        started = time.monotonic()
        try:
            cond, noise = self.pipeline.prepare(request.prompt, request.negative_prompt, plan.config,
                                                request.prompt_syntax)
            start = None
            if waiting.init is not None and plan.start is not None:
                start = self.pipeline.image_start(plan, waiting.init)
                noise, cond = start.latents, start.condition(cond)
            if waiting.control is not None:
                cond = self.pipeline.attach_control(plan, cond, waiting.control)
            program = self.pipeline.program(plan, cond, noise, start=start)
            job = _Job(waiting, program, started, time.monotonic() - started)
            job.pending = next(program)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            self._fail(waiting.ticket, exc)
            return
        with self._wake:
            self._active.append(job)

    def _call(self, chunk: Sequence[_Job]) -> None:
        """ONE UNet call for the pending rows of ``chunk``; each job gets its outputs."""
        rows = [job.pending for job in chunk if job.pending is not None]
        branches = [(lat, cond) for r in rows for lat, cond in zip(r.latents, r.conds)]
        latents = torch.cat([lat for lat, _ in branches])
        cond = cat_conditions([c for _, c in branches])
        t = call_timesteps([(r.t, r.count) for r in rows])
        try:
            out = self.pipeline.denoiser(latents, t, cond)
        except Exception as exc:  # noqa: BLE001
            for job in chunk:
                self._fail(job.ticket, exc)
            return
        with self._wake:
            self._stats.call(int(latents.shape[0]), time.monotonic())
        parts = iter(out.split([int(lat.shape[0]) for lat, _ in branches]))
        for job, r in zip(chunk, rows):
            job.advance(list(itertools.islice(parts, len(r.latents))))

    def _decode(self, group: list[_Job]) -> None:
        pipe = self.pipeline
        counts = [job.waiting.plan.config.batch for job in group]
        for indices in decode_chunks(counts, pipe.limits.max_batch or sum(counts)):
            chunk = [group[i] for i in indices]
            began = time.monotonic()
            latents = torch.cat([job.latents for job in chunk if job.latents is not None])
            try:
                decoded = pipe.vae_decode(latents)
            except Exception as exc:  # noqa: BLE001
                for job in chunk:
                    self._fail(job.ticket, exc)
                continue
            decode_s = time.monotonic() - began
            sizes = [job.waiting.plan.config.batch for job in chunk]
            for job, own, pixels in zip(chunk, latents.split(sizes), decoded.split(sizes)):
                plan = job.waiting.plan
                try:
                    images = pipe.finish(own, pixels, plan.params)
                except Exception as exc:  # noqa: BLE001 - e.g. NonFiniteImageError, for this request only
                    self._fail(job.ticket, exc)
                    continue
                denoise_s = began - job.started - job.text_s
                timings = Timings(job.text_s, denoise_s, decode_s, plan.denoising_steps)
                with self._wake:
                    self._stats.completed(time.monotonic() - job.started)
                job.ticket.end(Generation(images, plan.params, timings, plan.config))

    def _fail(self, ticket: Ticket, exc: BaseException) -> None:
        with self._wake:
            self._stats.count("failed")
        ticket.end(exc)
