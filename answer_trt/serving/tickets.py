"""A submitted request's handle (``Ticket``) and the ways it can end besides an image:
cancelled, past its deadline, or refused because the queue is full."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any


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
    """A submitted request: ``future`` ends with its result or one of the errors above.
    ``deadline``: a ``time.monotonic()`` value, or None. ``wake`` is the batcher's
    condition, notified when the ticket is cancelled."""

    def __init__(self, request: Any, deadline: float | None, wake: threading.Condition) -> None:
        self.request = request
        self.deadline = deadline
        self.submitted = time.monotonic()
        self.future: Future[Any] = Future()
        # Running from the start: ``future.cancel()`` (asyncio's, when an awaiting task is
        # cancelled) then does nothing, so only the worker ends a future; ``cancel()`` asks it to.
        self.future.set_running_or_notify_cancel()
        self._cancelled = threading.Event()
        self._wake = wake

    def result(self, timeout: float | None = None) -> Any:
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

    def ending(self, now: float) -> RequestCancelled | DeadlineExceeded | None:
        """Why this ticket must end at ``now`` (cancelled, or past its deadline), or None."""
        if self.cancel_requested:
            return RequestCancelled("the request was cancelled")
        if self.deadline is not None and now > self.deadline:
            return DeadlineExceeded(f"the request was not finished within its timeout "
                                    f"({now - self.submitted:.1f} s passed)")
        return None

    def end(self, outcome: Any) -> None:
        """Finish the future with ``outcome`` (a result, or an exception to raise); a
        future already finished keeps its first outcome."""
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)
