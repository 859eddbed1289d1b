"""The scheduler: the one way to the model, with priority classes and fast refusals.

Every piece of model work (an agent's generation and its repair attempt, the summaries that
distill its context, a RAG answer, warming a story) runs inside a turn taken here; routes
never touch the queue, the agent runner does. A request reserves a :class:`Turn` as soon as it
is known to need the model (before any response byte is sent, so a full queue is a plain 503
with ``Retry-After``), then waits inside ``async with turn``.

Order: interactive turns before background ones (a story warmed ahead of time), first come
first served within a class. A background turn that has waited ``promote_after_s`` is served
as an interactive one from then on (aging), so background work is delayed, never starved. A
turn is never interrupted by another. A waiter that gives up (client gone, task cancelled,
``max_wait_s`` passed) leaves the queue without touching the model.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from types import TracebackType
from typing import Any, Self

from app.errors import QueueFull, QueueTimeout, ServiceDraining

#: Weight of the newest turn in the running average of time in the model (EWMA).
_EWMA_WEIGHT = 0.2


class JobClass(enum.IntEnum):
    """Priority classes, most urgent first."""

    interactive = 0
    background = 1


class Scheduler:
    """The queue in front of one model.

    ``max_waiting``: turns that may wait while one runs (``QUEUE_MAX_WAITING``).
    ``max_wait_s``: seconds a turn may wait before it is refused (``QUEUE_MAX_WAIT_S``).
    ``promote_after_s``: seconds after which a waiting background turn counts as interactive
    (``SCHEDULER_PROMOTE_AFTER_S``).
    """

    def __init__(self, max_waiting: int, max_wait_s: float, promote_after_s: float = 60.0) -> None:
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.promote_after_s = promote_after_s
        self._holder: Turn | None = None
        self._waiters: list[Turn] = []
        self._average_s = 5.0
        self.draining = False
        self._stop_streams = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Turns waiting for the model now."""
        return len(self._waiters)

    @property
    def running(self) -> int:
        """Turns holding the model now (0 or 1)."""
        return int(self._holder is not None)

    @property
    def busy(self) -> bool:
        """Whether any turn holds or waits for the model."""
        return bool(self.running or self.waiting)

    def begin_drain(self) -> None:
        """Refuse new turns from now on (``ServiceDraining``); running ones go on."""
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

    def reserve(self, job_class: JobClass = JobClass.interactive) -> Turn:
        """Take a place in the queue, or refuse at once.

        Raises:
            ServiceDraining: the server is shutting down (HTTP 503).
            QueueFull: ``max_waiting`` turns are already waiting (HTTP 503, Retry-After).
        """
        if self.draining:
            raise ServiceDraining("The server is shutting down and takes no new generations; "
                                  "retry on another instance or after the restart.")
        if (self._holder is not None or self._waiters) and self.waiting >= self.max_waiting:
            raise QueueFull(
                f"The model is busy and {self.waiting} requests are already waiting; retry "
                "later.",
                retry_after=self.retry_after_s(),
            )
        turn = Turn(self, job_class)
        self._waiters.append(turn)
        self._grant()
        return turn

    def _rank(self, turn: Turn, now: float) -> tuple[int, float]:
        promoted = now - turn.reserved_at >= self.promote_after_s
        job_class = JobClass.interactive if promoted else turn.job_class
        return int(job_class), turn.reserved_at

    def _grant(self) -> None:
        """Give the model to the most urgent waiter when it is free."""
        if self._holder is not None or not self._waiters:
            return
        now = time.perf_counter()
        turn = min(self._waiters, key=lambda t: self._rank(t, now))
        self._waiters.remove(turn)
        self._holder = turn
        turn.granted.set_result(None)

    def _leave(self, turn: Turn) -> None:
        if turn in self._waiters:
            self._waiters.remove(turn)

    def _release(self, turn: Turn) -> None:
        if self._holder is turn:
            self._holder = None
            if turn.entered_at is not None:
                self._average_s += _EWMA_WEIGHT * (time.perf_counter() - turn.entered_at
                                                   - self._average_s)
        self._grant()


class Turn:
    """A place in the queue; ``async with`` waits for the model and holds it.

    ``queue_s`` is the time spent waiting, in seconds. A turn is used once.
    """

    def __init__(self, scheduler: Scheduler, job_class: JobClass) -> None:
        self._scheduler = scheduler
        self.job_class = job_class
        self.reserved_at = time.perf_counter()
        self.entered_at: float | None = None
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue_s = 0.0

    def cancel(self) -> None:
        """Give up the place without entering (the request failed or left before its turn);
        a turn already granted but not entered passes the model on."""
        scheduler = self._scheduler
        scheduler._leave(self)
        if self.entered_at is None and scheduler._holder is self:
            scheduler._release(self)

    async def __aenter__(self) -> Self:
        scheduler = self._scheduler
        try:
            await asyncio.wait_for(asyncio.shield(self.granted), timeout=scheduler.max_wait_s)
        except TimeoutError:
            self.cancel()
            raise QueueTimeout(
                f"The request waited {scheduler.max_wait_s:g} s for the model without its turn "
                "coming; retry later.",
                retry_after=scheduler.retry_after_s(),
            ) from None
        except BaseException:
            self.cancel()
            raise
        self.entered_at = time.perf_counter()
        self.queue_s = self.entered_at - self.reserved_at
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._scheduler._release(self)


async def wait_uncancellable(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` (a worker thread using the model) even if this task is cancelled
    meanwhile: a turn must not pass on while a thread still uses the model. A cancellation
    that arrives while waiting is raised once the thread is done; the thread's own outcome
    (result or error) stays on ``future`` for the caller to read."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # noqa: BLE001 - the outcome is read from the future by the caller
            break
    if cancelled:
        raise asyncio.CancelledError
