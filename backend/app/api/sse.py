"""The one place stream events become Server-Sent Events frames (via sse-starlette).

Every stream ends with exactly one terminal event: ``done`` or ``error``. A failure after the
first byte cannot change the status code any more, so it becomes an ``error`` event carrying
the same ``code``/``message`` as the JSON error envelope.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.agents.events import DONE, ERROR
from app.api.errors import error_body
from app.config import HttpSettings
from app.errors import WriterAssistantError

logger = logging.getLogger(__name__)


StreamEvents = AsyncGenerator[tuple[str, dict[str, Any]], None]


class OpenStreams:
    """How many SSE responses are still sending; a drain waits for them to finish."""

    def __init__(self) -> None:
        self.count = 0


def _frame(event: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, ensure_ascii=False), event=event)


async def _framed(events: StreamEvents, open_streams: OpenStreams | None
                  ) -> AsyncIterator[ServerSentEvent]:
    if open_streams is not None:
        open_streams.count += 1
    try:
        async for frame in _frames(events):
            yield frame
    finally:
        if open_streams is not None:
            open_streams.count -= 1


async def _frames(events: StreamEvents) -> AsyncIterator[ServerSentEvent]:
    terminal_sent = False
    try:
        async for event, data in events:
            if terminal_sent:
                break
            terminal_sent = event in (DONE, ERROR)
            yield _frame(event, data)
    except WriterAssistantError as error:
        yield _frame(ERROR, error_body(error)["error"])
        terminal_sent = True
    except Exception:  # after the first byte an error event is all we can send
        logger.exception("stream failed")
        yield _frame(ERROR, {"code": "internal_error", "type": "server_error",
                             "message": "The stream failed.", "param": None})
        terminal_sent = True
    finally:
        await events.aclose()
    if not terminal_sent:
        yield _frame(ERROR, {"code": "stream_incomplete", "type": "server_error",
                             "message": "The stream ended without a result.", "param": None})


def sse_response(events: StreamEvents, settings: HttpSettings,
                 open_streams: OpenStreams | None = None) -> EventSourceResponse:
    """Frame ``events`` (``(name, payload)`` pairs) as an SSE response.

    Keep-alive comments every ``SSE_PING_SECONDS``; ``X-Accel-Buffering: no`` so proxies pass
    tokens through as they come. A frame that takes longer than ``SSE_SEND_TIMEOUT_S`` to
    send (the client stopped reading and the socket buffers are full) ends the response,
    which closes ``events`` and so stops the generation and frees the model.
    ``open_streams`` counts the response while it sends.
    """
    return EventSourceResponse(
        _framed(events, open_streams),
        ping=settings.sse_ping_s,
        send_timeout=settings.sse_send_timeout_s,
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )
