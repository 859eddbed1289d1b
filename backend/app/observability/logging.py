"""Structured logs: one line per event, each with the request id.

:func:`configure_logging` (called by ``create_app``) puts one handler on the root logger:
JSON lines by default (python-json-logger), or plain text for humans (``LOG_FORMAT=text``).
Every line carries ``request_id``, the ``X-Request-Id`` of the request it belongs to (from
asgi-correlation-id's context variable; ``null`` outside a request).

A JSON line looks like::

    {"level": "INFO", "logger": "app.generation", "message": "generation",
     "request_id": "4f1c...", "operation": "generate-chapter", "agent": "writer", ...,
     "prompt_tokens": 3306, "completion_tokens": 128, ...,
     "time": "2025-01-01T12:00:00.123456+00:00"}

Prompts and story text are never logged unless ``LOG_PROMPTS`` is on (a debugging aid): the
events below carry counts and timings only, and the rest of the package logs file names,
codes and figures, never request content.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.config import ObservabilitySettings
from app.llm.protocol import Completion

#: Name of the handler this module installs, so a second call replaces it.
HANDLER_NAME = "writer_assistant"
_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"
_JSON_FIELDS = ("levelname", "name", "message", "correlation_id")
_JSON_RENAMES = {"levelname": "level", "name": "logger", "correlation_id": "request_id"}
#: Record attributes never output: the standard ones, and uvicorn's ANSI-coloured duplicate of
#: its message.
_RESERVED = (*RESERVED_ATTRS, "color_message")

#: The logger of per-generation events.
generation_logger = logging.getLogger("app.generation")

#: Libraries that log request or response content at DEBUG: sse-starlette every SSE chunk
#: (story text, token by token), the openai client its request options (the messages). They are
#: held at INFO unless LOG_PROMPTS is on, so LOG_LEVEL=DEBUG never leaks story text.
CONTENT_LOGGERS = ("sse_starlette", "openai")


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "text":
        return logging.Formatter(_TEXT_FORMAT)
    return JsonFormatter(list(_JSON_FIELDS), rename_fields=_JSON_RENAMES, timestamp="time",
                         reserved_attrs=_RESERVED, json_ensure_ascii=False)


def configure_logging(settings: ObservabilitySettings,
                      stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) as ``LOG_FORMAT`` lines at
    ``LOG_LEVEL``, with the request id; returns the handler.

    Idempotent: a handler installed by an earlier call is replaced, other handlers (pytest's
    capture, say) are left alone. Loggers that would log content at DEBUG
    (:data:`CONTENT_LOGGERS`) are held at INFO unless ``LOG_PROMPTS`` is on. Uvicorn's loggers
    propagate here when it runs with ``log_config=None`` (``app.server``); otherwise uvicorn
    keeps its own format.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(_formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in CONTENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if settings.log_prompts else logging.INFO)
    return handler


def log_generation(
    *,
    operation: str,
    agent: str,
    completion: Completion,
    streamed: bool,
    attempt: int = 1,
    prompt: str | None = None,
) -> None:
    """Log one completed generation as a ``generation`` event (INFO).

    Fields: ``operation``, ``agent``, ``streamed``, ``attempt`` (2 for a JSON agent's repair),
    ``finish_reason``, ``prompt_tokens``, ``cached_tokens`` (prompt tokens whose KV state was
    reused), ``completion_tokens``, ``queue_ms``, ``ttft_ms``,
    ``total_ms`` (milliseconds) and ``decode_tokens_per_s``. ``prompt`` (the rendered prompt)
    and the completion's ``text`` are added only when ``prompt`` is given, which the runner
    does only with ``LOG_PROMPTS`` on.
    """
    timings = completion.timings
    fields: dict[str, Any] = {
        "operation": operation,
        "agent": agent,
        "streamed": streamed,
        "attempt": attempt,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "cached_tokens": completion.cached_tokens,
        "completion_tokens": completion.completion_tokens,
        "queue_ms": round(timings.queue_ms, 1),
        "ttft_ms": round(timings.time_to_first_token_ms, 1),
        "total_ms": round(timings.total_ms, 1),
        "decode_tokens_per_s": round(timings.decode_tokens_per_s, 1),
    }
    if prompt is not None:
        fields["prompt"] = prompt
        fields["text"] = completion.text
    generation_logger.info("generation", extra=fields)


def log_error_answer(code: str, status: int | None) -> None:
    """Log one error answer (HTTP error or stream ``error`` event) as an ``error_answer``
    event: WARNING for server-side failures (5xx), INFO for refusals."""
    level = logging.WARNING if status is not None and status >= 500 else logging.INFO
    logging.getLogger("app.errors").log(level, "error_answer",
                                        extra={"code": code, "status": status})
