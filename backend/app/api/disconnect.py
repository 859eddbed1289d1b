"""Stop work for clients that have gone: a JSON request whose client disconnects is cancelled,
so a request that was still queued never reaches the model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request, Response

T = TypeVar("T")

#: How often a waiting request checks its connection, in seconds.
POLL_S = 0.25


#: Status logged for a request whose client left before the answer (nginx's convention; the
#: client never sees it).
CLIENT_CLOSED_REQUEST = 499


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Await ``work``, cancelling it if the client disconnects first.

    Returns ``work``'s result, or an empty 499 response when the client went away (nobody is
    left to read it; it only shows in the access log).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        if not task.done():
            task.cancel()
