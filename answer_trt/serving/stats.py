"""The batcher's counters and the figures derived from them (``/v1/stats``)."""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass
from typing import Any

# The window over which ``BatcherStats.calls_per_second`` counts calls.
RATE_WINDOW_S = 10.0


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
class RequestProgress:
    """One request a batcher holds: its steps done and its steps (sampling steps, not UNet
    calls), and the seconds since it was submitted."""

    steps_done: int
    steps: int
    elapsed_s: float


@dataclass(frozen=True)
class Progress:
    """The requests a batcher holds now: those in flight (oldest first) and those waiting to
    join (no step done). Both empty: idle."""

    running: tuple[RequestProgress, ...]
    waiting: tuple[RequestProgress, ...]


class StatsRecorder:
    """Counts of outcomes and calls, recent call times, and the mean service time. Not
    thread-safe: the batcher uses it under its own lock. Times are ``time.monotonic()``."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.counts = collections.Counter[str]()
        self._call_times: collections.deque[float] = collections.deque()
        self.service_s = 0.0  # the mean time from joining to finishing

    def count(self, outcome: str) -> None:
        """One more request ``cancelled``, ``expired`` or ``failed``."""
        self.counts[outcome] += 1

    def call(self, rows: int, now: float) -> None:
        """One UNet call of ``rows`` rows, made at ``now``."""
        self.counts["calls"] += 1
        self.counts["rows"] += rows
        self._call_times.append(now)
        while self._call_times and self._call_times[0] < now - RATE_WINDOW_S:
            self._call_times.popleft()

    def completed(self, served_s: float) -> None:
        """One request finished, ``served_s`` after it joined."""
        self.counts["completed"] += 1
        self.service_s += (served_s - self.service_s) / self.counts["completed"]

    def retry_after(self, active: int, waiting: int) -> float:
        """Seconds until the queue has likely moved by one: the mean service time spread
        over the requests in flight, at least one second."""
        per_request = self.service_s / max(active, 1)
        return max(1.0, math.ceil(per_request * max(waiting, 1)))

    def snapshot(self, now: float, *, queue_length: int, active: int, max_rows: int, batching: bool) -> BatcherStats:
        window = min(RATE_WINDOW_S, max(now - self.started, 1e-9))
        recent = sum(1 for t in self._call_times if t >= now - window)
        c = self.counts
        return BatcherStats(
            queue_length=queue_length, active=active, completed=c["completed"], cancelled=c["cancelled"],
            expired=c["expired"], failed=c["failed"], calls=c["calls"], rows=c["rows"],
            rows_per_call=c["rows"] / c["calls"] if c["calls"] else 0.0, calls_per_second=recent / window,
            max_rows=max_rows, batching=batching, uptime_s=now - self.started,
        )
