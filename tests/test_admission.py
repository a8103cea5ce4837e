"""The batcher's pure decisions (answer_trt.serving.admission) and its counters
(answer_trt.serving.stats), without engines or threads."""

from __future__ import annotations

import threading

import pytest
import torch

from answer_trt.serving.admission import admit, call_timesteps, decode_chunks, fill, group
from answer_trt.serving.stats import RATE_WINDOW_S, StatsRecorder
from answer_trt.serving.tickets import DeadlineExceeded, RequestCancelled, Ticket

A, B = (8, 8), (8, 10)  # two latent shapes


def test_an_idle_batcher_takes_the_head_whatever_its_size():
    assert admit([], [(A, 9)], limit=6) == 1
    assert admit([], [(A, 9), (A, 1)], limit=6) == 1  # the next one no longer fits beside it


def test_requests_join_while_their_shape_has_room_oldest_first():
    # 3 rows of A in flight, limit 6: a 2-row A joins, a 3-row A does not, and it stops the queue
    # (a 1-row request behind it waits too: strictly oldest first).
    assert admit([(A, 3)], [(A, 2), (A, 3), (A, 1)], limit=6) == 1
    # Another shape has its own rows.
    assert admit([(A, 6)], [(B, 6), (B, 1)], limit=6) == 1
    assert admit([(A, 3), (A, 3)], [(A, 1)], limit=6) == 0


def test_without_batching_only_an_idle_batcher_takes_one():
    assert admit([], [(A, 2), (A, 2)], limit=0) == 1
    assert admit([(A, 2)], [(A, 2)], limit=0) == 0


def test_grouping_keeps_first_appearance_order():
    assert group([A, B, A, B, A]) == [[0, 2, 4], [1, 3]]
    assert group([]) == []


@pytest.mark.parametrize("pending, limit, chosen", [
    ([3, 2, None, 3, 3, 2, 1], 6, [0, 1, 6]),  # oldest first; a later 1-row step fills the room
    ([3, 2, None, 3, 3, 2, 1], 8, [0, 1, 3]),
    ([3, 2, None, 3, 3, 2, 1], 12, [0, 1, 3, 4, 6]),
    ([None, None], 6, []),
    ([None, 7, 1], 6, [1]),  # the first request with a call always goes
    ([2, 2, 2], 6, [0, 1, 2]),
])
def test_a_call_takes_the_oldest_requests_that_fit(pending, limit, chosen):
    assert fill(pending, limit) == chosen


@pytest.mark.parametrize("images, limit, chunks", [
    ([2, 2, 2, 2], 4, [[0, 1], [2, 3]]),  # the hostile probe: 4 requests of 2 images, decoder built for 4
    ([1, 1, 1, 1, 1], 4, [[0, 1, 2, 3], [4]]),
    ([3, 2, 1], 4, [[0], [1, 2]]),
    ([4], 4, [[0]]),
    ([], 4, []),
])
def test_decode_chunks_fit_the_decoders_batch(images, limit, chunks):
    assert decode_chunks(images, limit) == chunks
    for chunk in chunks:
        assert sum(images[i] for i in chunk) <= limit


def test_timesteps_one_per_row_across_dtypes():
    t = call_timesteps([(torch.tensor(981), 3), (torch.tensor(500.5), 2)])
    assert t.dtype == torch.float32 and t.tolist() == [981.0, 981.0, 981.0, 500.5, 500.5]
    same = call_timesteps([(torch.tensor(7), 2), (torch.tensor(3), 1)])
    assert same.dtype == torch.int64 and same.tolist() == [7, 7, 3]


def test_a_ticket_ends_when_cancelled_or_past_its_deadline():
    wake = threading.Condition()
    ticket = Ticket("request", deadline=None, wake=wake)
    assert ticket.ending(ticket.submitted + 1e6) is None
    assert ticket.cancel() and isinstance(ticket.ending(ticket.submitted), RequestCancelled)
    late = Ticket("request", deadline=100.0, wake=wake)
    assert late.ending(99.0) is None and isinstance(late.ending(100.5), DeadlineExceeded)
    late.end(ValueError("first"))
    late.end("second")  # a finished ticket keeps its first outcome
    with pytest.raises(ValueError, match="first"):
        late.result(timeout=0)
    assert not late.cancel()


def test_stats_count_rows_rates_and_service_time():
    stats = StatsRecorder(started=0.0)
    for now in (1.0, 2.0, 3.0):
        stats.call(rows=3, now=now)
    stats.call(rows=1, now=2.5 + RATE_WINDOW_S)  # the first two calls leave the window
    stats.completed(2.0)
    stats.completed(4.0)
    stats.count("failed")
    snap = stats.snapshot(2.5 + RATE_WINDOW_S, queue_length=2, active=1, max_rows=6, batching=True)
    assert (snap.calls, snap.rows, snap.rows_per_call) == (4, 10, 2.5)
    assert snap.calls_per_second == pytest.approx(2 / RATE_WINDOW_S)
    assert (snap.completed, snap.failed, snap.cancelled) == (2, 1, 0)
    assert stats.service_s == pytest.approx(3.0)
    assert stats.retry_after(active=1, waiting=2) == 6.0 and stats.retry_after(active=3, waiting=0) == 1.0
