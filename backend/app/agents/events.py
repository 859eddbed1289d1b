"""What an agent call gives back: the JSON response body, or a stream's events.

The one mapping from the runner's results and stream items to what callers see, used by the
HTTP routes (JSON bodies and Server-Sent Events) and the CLI alike. A stream's events are
``progress`` (one per summary made while distilling), ``meta`` (the echoed fields and the
assembly report), ``token`` (text as it is produced), then ``done`` (or ``error``, which the
transport adds when the stream raises).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Any

from app.agents.runner import Meta, Progress
from app.agents.spec import AgentResult, AgentSpec
from app.context.report import AssemblyReport
from app.errors import GenerationFailed
from app.llm.protocol import Completion, TokenDelta
from app.schemas.usage import Usage

#: Event names; ``done`` and ``error`` are terminal.
META, TOKEN, PROGRESS, DONE, ERROR = "meta", "token", "progress", "done", "error"

#: (event name, JSON-ready payload) pairs.
Events = AsyncGenerator[tuple[str, dict[str, Any]], None]


def generation_fields(result: AgentResult) -> dict[str, Any]:
    """The fields every agent response shares: model, finish reason, usage (tokens), timings
    (milliseconds), attempts and the assembly report."""
    completion = result.completion
    return {
        "model": result.report.model,
        "finish_reason": completion.finish_reason,
        "usage": Usage.of(completion),
        "timings": asdict(completion.timings),
        "attempts": result.attempts,
        "context_metadata": result.report,
    }


def response_body(result: AgentResult) -> dict[str, Any]:
    """The JSON response of an agent call: the shared generation fields and the spec's own
    (validated against ``spec.response_model`` by the caller)."""
    return {**generation_fields(result), **result.spec.respond(result)}


def done_fields(spec: AgentSpec, completion: Completion,
                report: AssemblyReport | None) -> dict[str, Any]:
    """The payload of a stream's ``done`` event."""
    text = completion.text.strip()
    extra = spec.done_fields(text, report) if report is not None else {}
    return {"text": text, "finish_reason": completion.finish_reason,
            "usage": Usage.of(completion).model_dump(), "timings": asdict(completion.timings),
            **extra}


async def stream_events(spec: AgentSpec, items: AsyncGenerator[Any, None]) -> Events:
    """The runner's stream items for ``spec`` as events; closing this closes ``items``.

    Raises what the stream raises (the transport turns it into an ``error`` event), and
    ``GenerationFailed`` when the stream ends without a completion.
    """
    report: AssemblyReport | None = None
    try:
        async for item in items:
            if isinstance(item, Progress):
                yield PROGRESS, item.data
            elif isinstance(item, Meta):
                report = item.report
                yield META, {**item.echo, "context_metadata": report.model_dump(mode="json")}
            elif isinstance(item, TokenDelta):
                yield TOKEN, {"text": item.text}
            elif isinstance(item, Completion):
                yield DONE, done_fields(spec, item, report)
                return
        raise GenerationFailed("the model stream ended without a completion")
    finally:
        await items.aclose()
