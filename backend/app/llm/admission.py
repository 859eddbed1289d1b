"""Admission to the model: one request in it at a time, a bounded queue, fast refusals.

A request reserves a :class:`Ticket` as soon as it is known to need the model (before any
response byte is sent, so a full queue is a plain 503 with ``Retry-After``), then waits its
turn inside ``async with ticket``. The queue is first come, first served (``asyncio.Lock``
wakes waiters in order); a request never interrupts one that holds the model. A waiter that
gives up (client gone, task cancelled) leaves the queue without ever touching the model.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TypeVar

from app.errors import QueueFull, QueueTimeout, ServiceDraining

T = TypeVar("T")

#: Weight of the newest request in the running average of time in the model (EWMA).
_EWMA_WEIGHT = 0.2


class Admission:
    """The queue in front of one model.

    ``max_waiting``: requests that may wait while one runs (``QUEUE_MAX_WAITING``).
    ``max_wait_s``: seconds a request may wait before it is refused (``QUEUE_MAX_WAIT_S``).
    """

    def __init__(self, max_waiting: int, max_wait_s: float) -> None:
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._slot = asyncio.Lock()
        self.waiting = 0
        self.running = 0
        self._average_s = 5.0
        self.draining = False
        self._stop_streams = asyncio.Event()

    @property
    def busy(self) -> bool:
        """Whether any request holds or waits for the model."""
        return bool(self.running or self.waiting)

    def begin_drain(self) -> None:
        """Refuse new requests from now on (``ServiceDraining``); running ones go on."""
        self.draining = True

    def stop_streams(self) -> None:
        """Tell running streams to end now (the drain's grace period is over)."""
        self._stop_streams.set()

    @property
    def streams_stopped(self) -> bool:
        return self._stop_streams.is_set()

    def retry_after_s(self) -> int:
        """Seconds until a place is likely free: the queue ahead times the average stay."""
        return max(1, math.ceil(self._average_s * (self.waiting + self.running)))

    def reserve(self) -> Ticket:
        """Take a place in the queue, or refuse at once.

        Raises:
            ServiceDraining: the server is shutting down (HTTP 503).
            QueueFull: ``max_waiting`` requests are already waiting (HTTP 503, Retry-After).
        """
        if self.draining:
            raise ServiceDraining("The server is shutting down and takes no new generations; "
                                  "retry on another instance or after the restart.")
        if (self._slot.locked() or self.waiting) and self.waiting >= self.max_waiting:
            raise QueueFull(
                f"The model is busy and {self.waiting} requests are already waiting; retry "
                "later.",
                retry_after=self.retry_after_s(),
            )
        self.waiting += 1
        return Ticket(self)

    def _record(self, seconds: float) -> None:
        self._average_s += _EWMA_WEIGHT * (seconds - self._average_s)


class Ticket:
    """A place in the queue; ``async with`` waits for the model and holds it.

    ``queue_s`` is the time spent waiting, in seconds.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._reserved_at = time.perf_counter()
        self._entered_at: float | None = None
        self._waiting = True
        self.queue_s = 0.0

    def _leave_queue(self) -> None:
        if self._waiting:
            self._waiting = False
            self._admission.waiting -= 1

    def cancel(self) -> None:
        """Give up the place without entering (e.g. the request failed before its turn)."""
        self._leave_queue()

    async def __aenter__(self) -> Ticket:
        admission = self._admission
        try:
            await asyncio.wait_for(admission._slot.acquire(), timeout=admission.max_wait_s)
        except TimeoutError:
            raise QueueTimeout(
                f"The request waited {admission.max_wait_s:g} s for the model without its turn "
                "coming; retry later.",
                retry_after=admission.retry_after_s(),
            ) from None
        finally:
            self._leave_queue()
        self._entered_at = time.perf_counter()
        self.queue_s = self._entered_at - self._reserved_at
        admission.running += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        admission = self._admission
        admission.running -= 1
        if self._entered_at is not None:
            admission._record(time.perf_counter() - self._entered_at)
        admission._slot.release()


async def in_turn(ticket: Ticket, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Iterate ``items`` once ``ticket``'s turn comes, holding the model until they end.

    Closing the iterator before the turn comes leaves the queue without touching the model.
    """
    try:
        async with ticket:
            async for item in items:
                yield item
    finally:
        ticket.cancel()
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
