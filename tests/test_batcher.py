"""The step-level batcher: the same images as ``Pipeline.generate``, one UNet call per
step across requests, cancellation, deadlines, a bounded queue, failures kept to their
requests. On the trained `tiny` model's ONNX Runtime engines (CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from answer_trt.errors import UserInputError
from answer_trt.serving.batcher import (
    DeadlineExceeded,
    GenerateRequest,
    QueueFullError,
    RequestCancelled,
    StepBatcher,
    call_rows,
)

# One of each kind of step program, with a negative prompt and two sizes (two groups).
MIXED = [
    GenerateRequest("a red circle and a blue square", method="answer", steps=12, seed=1),
    GenerateRequest("a green triangle", method="cfg", steps=9, seed=2),
    GenerateRequest("a blue square", method="dns", steps=10, seed=3),
    GenerateRequest("a yellow circle", method="answer", mode="inner", dns_steps=2, steps=8, seed=4),
    GenerateRequest("a red square", method="cfg", negative_prompt="a blue square", steps=11, seed=5),
    GenerateRequest("a blue triangle", method="answer", chain_min_sigma=0.0, steps=10, seed=6, height=48, width=48),
    GenerateRequest("a green circle", method="cfg", steps=7, seed=7, height=48, width=48),
]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    import answer_trt
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build
    from answer_trt.iospec import SizeRange

    out = tmp_path_factory.mktemp("batcher") / "tiny"
    build(BuildConfig(model="tiny", out=out, max_batch=4, height=SizeRange(32, 32, 48), width=SizeRange(32, 32, 48)),
          log=lambda _m: None)
    return answer_trt.load(Path(out))


def pixels(generation) -> np.ndarray:
    return np.asarray(generation.images[0]).astype(np.int16)


def reference(pipe, request: GenerateRequest) -> np.ndarray:
    return pixels(pipe.generate(request.prompt, **request.keywords()))


def test_mixed_requests_joining_mid_flight_equal_generate(pipe):
    with StepBatcher(pipe) as batcher:
        first = [batcher.submit(r) for r in MIXED[:3]]
        deadline = time.monotonic() + 60
        while batcher.stats().calls < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        later = [batcher.submit(r) for r in MIXED[3:]]
        results = [t.result(timeout=120) for t in first + later]
        stats = batcher.stats()
    for request, result in zip(MIXED, results):
        want = reference(pipe, request)
        got = pixels(result)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1, request
        assert result.params["prompt"] == request.prompt and result.params["method"] == request.method
        assert result.params["seed"] == str(request.seed)
    assert stats.completed == len(MIXED) and stats.active == 0 and stats.queue_length == 0
    # One request's steps have 2 or 3 rows: more than 3 per call means requests shared calls.
    assert stats.rows_per_call > 3
    assert stats.rows <= stats.calls * batcher.max_rows


def test_without_batching_requests_run_one_at_a_time_and_agree(pipe):
    requests = MIXED[:3]
    with StepBatcher(pipe, batching=False) as batcher:
        tickets = [batcher.submit(r) for r in requests]
        results = [t.result(timeout=120) for t in tickets]
        stats = batcher.stats()
    assert stats.calls == sum(r.steps for r in requests)  # no inner mode here: one call per step each
    assert stats.rows_per_call <= 3
    for request, result in zip(requests, results):
        assert np.abs(pixels(result) - reference(pipe, request)).max() <= 1


def test_requests_finishing_together_are_decoded_within_the_decoders_batch(pipe):
    """Four requests of 2 images that finish at one step: 8 images, a decoder built for 4. The
    decode calls take 4 rows at most (three requests were refused as "batch=6 is outside the
    built profile" by the hostile probe)."""
    requests = [GenerateRequest("a red circle", method="cfg", steps=1, seed=s, batch=2) for s in range(4)]
    with StepBatcher(pipe) as batcher:
        results = [t.result(timeout=120) for t in [batcher.submit(r) for r in requests]]
    assert [len(r.images) for r in results] == [2, 2, 2, 2]
    for request, result in zip(requests, results):
        want = pipe.generate(request.prompt, **request.keywords())
        assert np.abs(np.asarray(result.images[1]).astype(np.int16)
                      - np.asarray(want.images[1]).astype(np.int16)).max() <= 1


def test_a_small_max_rows_makes_requests_wait_their_turn(pipe):
    requests = [GenerateRequest("a red circle", method="cfg", steps=5, seed=s) for s in range(3)]
    with StepBatcher(pipe, max_rows=4) as batcher:  # two CFG requests per call at most
        results = [t.result(timeout=120) for t in [batcher.submit(r) for r in requests]]
        stats = batcher.stats()
    assert stats.rows_per_call <= 4 and stats.completed == 3
    assert stats.calls >= 10  # the third request ran after the first two
    for request, result in zip(requests, results):
        assert np.abs(pixels(result) - reference(pipe, request)).max() <= 1


def test_a_request_joins_by_the_rows_its_first_step_needs_not_its_peak(pipe):
    """With 4 rows per call, a CFG request in flight (2 rows a step) leaves room for an ANSWER
    request's first step (a re-anchor: 2 rows, as its guider declares), not for its peak (3):
    they share that call. ANSWER's next step (3 rows) then waits for room instead of adding
    a second call to each iteration."""
    cfg = GenerateRequest("a green triangle", method="cfg", steps=8, seed=2)
    answer = GenerateRequest("a red circle", method="answer", steps=8, seed=1, guidance_min_sigma=0.0)
    plan = pipe.plan(answer)
    # K = 4: re-anchored at steps 0 and 4; steps 6 and 7 are below the chain's interval.
    assert call_rows(plan.config, plan.rule) == [2, 3, 3, 3, 2, 3, 2, 2]
    with StepBatcher(pipe, max_rows=4) as batcher:
        tickets = [batcher.submit(cfg), batcher.submit(answer)]
        results = [t.result(timeout=120) for t in tickets]
        stats = batcher.stats()
    assert stats.rows == 8 * 2 + sum(call_rows(plan.config, plan.rule)) and stats.rows <= stats.calls * 4
    # One shared call: by its peak, ANSWER would have waited for all 8 CFG calls (8 + 8);
    # splitting an iteration into calls that fit would have made part-empty calls (12).
    assert stats.calls == 8 + 8 - 1, stats
    for request, result in zip((cfg, answer), results):
        assert np.abs(pixels(result) - reference(pipe, request)).max() <= 1


def test_cancel_ends_the_request_and_the_next_one_runs(pipe):
    with StepBatcher(pipe) as batcher:
        long = batcher.submit(GenerateRequest("a red circle", steps=400))
        deadline = time.monotonic() + 60
        while batcher.stats().calls < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not long.future.cancel()  # asyncio's cancel of an awaiting task cannot end it under the worker
        assert long.cancel()
        with pytest.raises(RequestCancelled):
            long.result(timeout=60)
        assert not long.cancel()  # already ended
        nxt = batcher.submit(GenerateRequest("a blue square", method="cfg", steps=4))
        assert nxt.result(timeout=60).images[0].size == (32, 32)
        assert batcher.stats().cancelled == 1


def test_a_request_past_its_deadline_ends_with_deadline_exceeded(pipe):
    with StepBatcher(pipe) as batcher:
        ticket = batcher.submit(GenerateRequest("a red circle", steps=900), deadline_s=0.3)
        with pytest.raises(DeadlineExceeded, match="timeout"):
            ticket.result(timeout=60)
        assert batcher.stats().expired == 1
        with pytest.raises(UserInputError, match="timeout"):
            batcher.submit(GenerateRequest("a red circle"), deadline_s=-1)


def test_a_full_queue_refuses_with_a_retry_hint(pipe):
    with StepBatcher(pipe, batching=False, max_queue=1) as batcher:
        running = batcher.submit(GenerateRequest("a red circle", steps=900))
        deadline = time.monotonic() + 60
        while batcher.stats().active < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = batcher.submit(GenerateRequest("a red circle", steps=3))
        with pytest.raises(QueueFullError) as refused:
            batcher.submit(GenerateRequest("a red circle", steps=3))
        assert refused.value.retry_after_s >= 1
        running.cancel()
        assert waiting.result(timeout=60).images
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(GenerateRequest("a red circle"))


def test_close_cancels_what_has_not_finished(pipe):
    batcher = StepBatcher(pipe, batching=False)
    tickets = [batcher.submit(GenerateRequest("a red circle", steps=900)) for _ in range(2)]
    batcher.close()
    for ticket in tickets:
        with pytest.raises(RequestCancelled):
            ticket.result(timeout=10)


@pytest.mark.parametrize("request_, message", [
    (GenerateRequest("a red circle", height=36), "multiple of 8"),
    (GenerateRequest("a red circle", height=64), "outside what was built"),
    (GenerateRequest("a red circle", method="magic"), "unknown method"),
    (GenerateRequest("a red circle", scheduler="lms"), "unknown scheduler"),
    (GenerateRequest("a red circle", steps=0), "steps"),
    (GenerateRequest("a red circle", steps=2000), "steps must be at most 1000"),
    (GenerateRequest(123), "prompt must be a string"),  # type: ignore[arg-type]
])
def test_bad_requests_are_refused_at_submit_with_the_cli_message(pipe, request_, message):
    with StepBatcher(pipe) as batcher:
        with pytest.raises(UserInputError, match=message):
            batcher.submit(request_)
        assert batcher.stats().queue_length == 0


def test_max_rows_is_checked_against_the_engines(pipe):
    with pytest.raises(UserInputError, match="beyond the 12 rows"):
        StepBatcher(pipe, max_rows=13)
    with pytest.raises(UserInputError, match="at least 2"):
        StepBatcher(pipe, max_rows=1)
    with StepBatcher(pipe, max_rows=2) as batcher:
        with pytest.raises(UserInputError, match="needs 3 rows"):
            batcher.submit(GenerateRequest("a red circle"))  # ANSWER parallel: 3 rows a step


def test_a_failing_call_fails_its_requests_only(pipe):
    flaky = pipe
    real = flaky.denoiser
    calls = {"n": 0}

    def sometimes_broken(latents, t, cond):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("engine fell over")
        return real(latents, t, cond)

    flaky.denoiser = sometimes_broken
    try:
        with StepBatcher(flaky) as batcher:
            broken = batcher.submit(GenerateRequest("a red circle", method="cfg", steps=4))
            with pytest.raises(RuntimeError, match="fell over"):
                broken.result(timeout=60)
            fine = batcher.submit(GenerateRequest("a red circle", method="cfg", steps=4, seed=9))
            assert np.abs(pixels(fine.result(timeout=60)) - reference(pipe, fine.request)).max() <= 1
            assert batcher.stats().failed == 1
    finally:
        flaky.denoiser = real
