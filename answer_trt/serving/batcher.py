"""Step-level batching across requests: one UNet call per step for every request in flight.

Every row of a UNet call carries its own latents, timestep and text condition, so
requests at different steps, with different methods, can share a call: the three
rows of an ANSWER step of request A, the two CFG rows of request B and the rows of C,
which has just arrived, go through the engine together (iteration-level scheduling,
as LLM servers do it, with diffusion steps as the iterations).

Each request runs the sampler's own loop (``answer_trt.sampler.sampling_program``),
which yields the rows of each call instead of making it; the batcher answers many
programs with one call per group, so a request's latents are those of
``Pipeline.generate`` for the same request and seed (up to the engine's batch-size
rounding). Requests join a running set when the engine's batch axis has room for
their largest step (strictly oldest first, so nothing starves); every request in the
set advances one call per iteration. Finished requests are decoded together.

No serving framework in here: ``answer_trt.serving.app`` puts this behind Ray Serve.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from answer_trt.conditioning import cat_conditions
from answer_trt.config import SamplingConfig
from answer_trt.errors import UserInputError
from answer_trt.guiders import DenoiserCall, make_guider
from answer_trt.images import to_pil
from answer_trt.iospec import MAX_BRANCHES
from answer_trt.pipeline import Generation, Limits, Pipeline, Timings
from answer_trt.rules import check_int
from answer_trt.sampler import SamplingProgram, sampling_program
from answer_trt.schedulers import StepRule, make_scheduler, make_step_rule
from answer_trt.schema import GenerateRequest

# Rows per call when the engines set no limit (the torch backend).
UNLIMITED_ENGINE_ROWS = 48
# The window over which ``BatcherStats.calls_per_second`` counts calls.
RATE_WINDOW_S = 10.0


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit; ``retry_after_s`` estimates when there is room."""

    def __init__(self, waiting: int, retry_after_s: float) -> None:
        super().__init__(f"the queue is full ({waiting} requests waiting): retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class RequestCancelled(RuntimeError):
    """The request was cancelled (by its client, or because the batcher closed)."""


class DeadlineExceeded(RuntimeError):
    """The request was not finished by its deadline."""


class Ticket:
    """A submitted request: ``future`` ends with its ``Generation`` or one of the errors above."""

    def __init__(self, request: GenerateRequest, deadline: float | None, wake: threading.Condition) -> None:
        self.request = request
        self.deadline = deadline  # time.monotonic() value, or None
        self.submitted = time.monotonic()
        self.future: Future[Generation] = Future()
        # Running from the start: ``future.cancel()`` (asyncio's, when an awaiting task is
        # cancelled) then does nothing, so only the worker ends a future; ``cancel()`` asks it to.
        self.future.set_running_or_notify_cancel()
        self._cancelled = threading.Event()
        self._wake = wake

    def result(self, timeout: float | None = None) -> Generation:
        return self.future.result(timeout)

    def cancel(self) -> bool:
        """Ask the batcher to drop this request at its next iteration; False if it had ended."""
        if self.future.done():
            return False
        self._cancelled.set()
        with self._wake:
            self._wake.notify_all()
        return True

    @property
    def cancel_requested(self) -> bool:
        return self._cancelled.is_set()


@dataclass(frozen=True)
class BatcherStats:
    queue_length: int
    active: int
    completed: int
    cancelled: int
    expired: int
    failed: int
    calls: int
    rows: int
    rows_per_call: float
    calls_per_second: float
    max_rows: int
    batching: bool
    uptime_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Plan:
    """A validated request's configuration, scheduler and step rule (made at submit), what
    must agree to share a call with it (``key``: the latent shape) and its largest step."""

    config: SamplingConfig
    scheduler: Any
    rule: StepRule
    key: tuple[int, ...]
    peak_rows: int


@dataclass
class _Job:
    """An admitted request: its program, the rows it waits on, and its bookkeeping."""

    ticket: Ticket
    plan: _Plan
    params: dict[str, str]
    program: SamplingProgram
    started: float
    text_s: float
    pending: DenoiserCall | None = None
    latents: Tensor | None = None

    def advance(self, outputs: list[Tensor]) -> None:
        try:
            self.pending = self.program.send(outputs)
        except StopIteration as done:
            self.pending, self.latents = None, done.value


def peak_rows(config: SamplingConfig) -> int:
    """The most rows one denoiser call of this request puts on the batch axis (its method's
    guider says: ``answer_trt.guiders``); admission reserves that many."""
    return make_guider(config.guidance).peak_rows(config.batch)


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
        self._waiting: collections.deque[tuple[Ticket, _Plan]] = collections.deque()
        self._active: list[_Job] = []
        self._closed = False
        self._counts = collections.Counter[str]()
        self._call_times: collections.deque[float] = collections.deque()
        self._service_s = 0.0  # the mean time from joining to finishing, for Retry-After
        self._started = time.monotonic()
        self._worker = threading.Thread(target=self._run, name="answer-trt-batcher", daemon=True)
        self._worker.start()

    # -- the caller's side -------------------------------------------------------------

    def submit(self, request: GenerateRequest, *, deadline_s: float | None = None) -> Ticket:
        """Validate ``request`` (``UserInputError`` with the CLI's messages) and queue it.
        ``deadline_s``: seconds from now by which it must finish, or it ends with
        ``DeadlineExceeded``."""
        if not isinstance(request, GenerateRequest):
            raise UserInputError(f"expected a GenerateRequest, got {type(request).__name__}")
        config = self.pipeline.check_request(request.sampling_config(), request.prompt)
        scheduler = make_scheduler(self.pipeline.scheduler_config, config.scheduler)
        rule = make_step_rule(scheduler, config.steps)  # e.g. too many steps for the scheduler fails here
        plan = _Plan(config, scheduler, rule, self._key(config), peak_rows(config))
        if plan.peak_rows > self.max_rows:
            raise UserInputError(f"this request needs {plan.peak_rows} rows per call but the batcher takes "
                                 f"{self.max_rows}: raise --max-rows")
        if deadline_s is not None and (isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float))
                                       or not math.isfinite(deadline_s) or deadline_s <= 0):
            raise UserInputError(f"timeout must be a positive number of seconds, got {deadline_s!r}")
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                raise QueueFullError(len(self._waiting), self._retry_after())
            ticket = Ticket(request, None if deadline_s is None else time.monotonic() + deadline_s, self._wake)
            self._waiting.append((ticket, plan))
            self._wake.notify_all()
        return ticket

    def generate(self, request: GenerateRequest, timeout: float | None = None) -> Generation:
        """Submit and wait."""
        return self.submit(request, deadline_s=timeout).result()

    def stats(self) -> BatcherStats:
        with self._wake:
            now = time.monotonic()
            window = min(RATE_WINDOW_S, max(now - self._started, 1e-9))
            recent = sum(1 for t in self._call_times if t >= now - window)
            c = self._counts
            return BatcherStats(
                queue_length=len(self._waiting), active=len(self._active), completed=c["completed"],
                cancelled=c["cancelled"], expired=c["expired"], failed=c["failed"], calls=c["calls"],
                rows=c["rows"], rows_per_call=c["rows"] / c["calls"] if c["calls"] else 0.0,
                calls_per_second=recent / window, max_rows=self.max_rows, batching=self.batching,
                uptime_s=now - self._started,
            )

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

    def _retry_after(self) -> float:
        """Seconds until the queue has likely moved by one: the mean service time spread
        over the requests in flight, at least one second."""
        per_request = self._service_s / max(len(self._active), 1)
        return max(1.0, math.ceil(per_request * max(len(self._waiting), 1)))

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
                    self._fail(job, exc)
        with self._wake:
            ended = [t for t, _ in self._waiting] + [j.ticket for j in self._active]
            self._waiting.clear()
            self._active = []
        for ticket in ended:
            _end(ticket.future, RequestCancelled("the server is shutting down"))

    def _drop_ended(self) -> None:
        """Remove cancelled and expired requests, waiting or in flight (under the lock)."""
        now = time.monotonic()

        def ended(ticket: Ticket) -> bool:
            if ticket.cancel_requested:
                self._counts["cancelled"] += 1
                _end(ticket.future, RequestCancelled("the request was cancelled"))
                return True
            if ticket.deadline is not None and now > ticket.deadline:
                self._counts["expired"] += 1
                waited = now - ticket.submitted
                _end(ticket.future, DeadlineExceeded(f"the request was not finished within its timeout "
                                                     f"({waited:.1f} s passed)"))
                return True
            return False

        self._waiting = collections.deque(w for w in self._waiting if not ended(w[0]))
        self._active = [job for job in self._active if not ended(job.ticket)]

    def _take_joining(self) -> list[tuple[Ticket, _Plan]]:
        """The waiting requests that fit beside those in flight, strictly oldest first
        (under the lock)."""
        limit = self.max_rows if self.batching else 0
        used = collections.Counter[tuple[int, ...]]()
        for job in self._active:
            used[job.plan.key] += job.plan.peak_rows
        joining: list[tuple[Ticket, _Plan]] = []
        while self._waiting:
            ticket, plan = self._waiting[0]
            if (self._active or joining) and used[plan.key] + plan.peak_rows > limit:
                break
            self._waiting.popleft()
            used[plan.key] += plan.peak_rows
            joining.append((ticket, plan))
        return joining

    def _key(self, config: SamplingConfig) -> tuple[int, ...]:
        assert config.height is not None and config.width is not None  # resolved by request_config
        factor = self.pipeline.dims.vae_scale_factor
        return (config.height // factor, config.width // factor)

    def _iterate(self, joining: list[tuple[Ticket, _Plan]]) -> None:
        for ticket, plan in joining:
            self._join(ticket, plan)
        for group in _groups(self._active).values():
            for chunk in _pack(group, self.max_rows):
                self._call(chunk)
        finished = [job for job in self._active if job.latents is not None]
        if finished:
            with self._wake:
                self._active = [job for job in self._active if job.latents is None]
            for group in _groups(finished).values():
                self._decode(group)

    def _join(self, ticket: Ticket, plan: _Plan) -> None:
        pipe, request, config = self.pipeline, ticket.request, plan.config
        started = time.monotonic()
        try:
            cond, noise = pipe.prepare(request.prompt, request.negative_prompt, config)
            program = sampling_program(noise, cond, plan.rule, config.guidance, prediction_type=pipe.prediction_type)
            params = pipe.parameters(request, config, type(plan.scheduler).__name__)
            job = _Job(ticket, plan, params, program, started, time.monotonic() - started)
            job.pending = next(program)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            self._counts["failed"] += 1
            _end(ticket.future, exc)
            return
        with self._wake:
            self._active.append(job)

    def _call(self, chunk: Sequence[_Job]) -> None:
        """ONE UNet call for the pending rows of ``chunk``; each job gets its outputs."""
        rows = [job.pending for job in chunk]
        assert all(r is not None for r in rows)
        branches = [(lat, cond) for r in rows if r is not None for lat, cond in zip(r.latents, r.conds)]
        latents = torch.cat([lat for lat, _ in branches])
        cond = cat_conditions([c for _, c in branches])
        t = _timesteps([(r.t, r.count) for r in rows if r is not None])
        try:
            out = self.pipeline.denoiser(latents, t, cond)
        except Exception as exc:  # noqa: BLE001
            for job in chunk:
                self._fail(job, exc)
            return
        with self._wake:
            self._counts["calls"] += 1
            self._counts["rows"] += int(latents.shape[0])
            self._call_times.append(time.monotonic())
            while self._call_times and self._call_times[0] < time.monotonic() - RATE_WINDOW_S:
                self._call_times.popleft()
        parts = iter(out.split([int(lat.shape[0]) for lat, _ in branches]))
        for job, r in zip(chunk, rows):
            assert r is not None
            job.advance(list(itertools.islice(parts, len(r.latents))))

    def _decode(self, group: list[_Job]) -> None:
        pipe = self.pipeline
        step = pipe.limits.max_batch or len(group)
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            began = time.monotonic()
            latents = torch.cat([job.latents for job in chunk if job.latents is not None])
            try:
                decoded = pipe.vae_decode(latents)
            except Exception as exc:  # noqa: BLE001
                for job in chunk:
                    self._fail(job, exc)
                continue
            decode_s = time.monotonic() - began
            offset = 0
            for job in chunk:
                count = job.plan.config.batch
                try:
                    assert job.latents is not None  # finished jobs only
                    pipe.check_finite(job.latents, decoded[offset:offset + count])
                    images = to_pil(decoded[offset:offset + count], job.params)
                except Exception as exc:  # noqa: BLE001 - e.g. NonFiniteImageError, for this request only
                    self._fail(job, exc)
                    continue
                finally:
                    offset += count
                denoise_s = began - job.started - job.text_s
                timings = Timings(job.text_s, denoise_s, decode_s, job.plan.config.steps)
                with self._wake:
                    self._counts["completed"] += 1
                    served = time.monotonic() - job.started
                    done = self._counts["completed"]
                    self._service_s += (served - self._service_s) / done
                _end(job.ticket.future, Generation(images, job.params, timings, job.plan.config))

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._wake:
            self._counts["failed"] += 1
        _end(job.ticket.future, exc)


def _end(future: Future[Generation], outcome: Generation | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _groups(jobs: Sequence[_Job]) -> dict[tuple[int, ...], list[_Job]]:
    """Jobs that can share a call (or a decode), in their order."""
    groups: dict[tuple[int, ...], list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.plan.key, []).append(job)
    return groups


def _pack(group: list[_Job], max_rows: int) -> list[list[_Job]]:
    """Consecutive chunks of at most ``max_rows`` pending rows, in order (oldest first)."""
    chunks: list[list[_Job]] = []
    rows = 0
    for job in group:
        if job.pending is None:
            continue
        count = job.pending.count
        if not chunks or rows + count > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(job)
        rows += count
    return chunks


def _timesteps(per_request: list[tuple[Tensor, int]]) -> Tensor:
    """One timestep per row; requests on different schedulers may differ in dtype."""
    dtypes = {t.dtype for t, _ in per_request}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return torch.cat([t.to(dtype).reshape(1).expand(count) for t, count in per_request])
