"""What an agent call gives back: the JSON response body, or a stream's events.

The one mapping from the runner's results and stream items to what callers see, used by the
HTTP routes (JSON bodies and Server-Sent Events) and the CLI alike. A stream's events are
``progress`` (one per summary made while distilling), ``meta`` (the answer's
``generation_id``, ``seed`` and ``cache``, the echoed fields and the assembly report),
``token`` (text as it is produced), then ``done`` (or ``error``, which the
transport adds when the stream raises).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Any

from app.agents.runner import Meta, Progress
from app.agents.spec import AgentResult
from app.errors import GenerationFailed
from app.llm.protocol import TokenDelta
from app.schemas.usage import Usage

#: Event names; ``done`` and ``error`` are terminal.
META, TOKEN, PROGRESS, DONE, ERROR = "meta", "token", "progress", "done", "error"

#: (event name, JSON-ready payload) pairs.
Events = AsyncGenerator[tuple[str, dict[str, Any]], None]


def record_fields(result: AgentResult) -> dict[str, Any]:
    """The answer's record: ``generation_id``, ``seed`` and ``cache`` (empty with records
    off)."""
    return result.generation.fields() if result.generation is not None else {}


def generation_fields(result: AgentResult) -> dict[str, Any]:
    """The fields every agent response shares: its record (``generation_id``, ``seed``,
    ``cache``), model, finish reason, usage (tokens), timings (milliseconds), attempts and
    the assembly report."""
    completion = result.completion
    return {
        **record_fields(result),
        "model": result.report.model,
        "finish_reason": completion.finish_reason,
        "usage": Usage.of(completion),
        "timings": asdict(completion.timings),
        "attempts": result.attempts,
        "quality": quality(result),
        "context_metadata": result.report,
    }


def quality(result: AgentResult) -> dict[str, Any]:
    """The content check's verdict on a result (the ``quality`` field)."""
    return {"useful": not result.problems, "problems": list(result.problems),
            "repairs": list(result.repairs)}


def response_body(result: AgentResult) -> dict[str, Any]:
    """The JSON response of an agent call: the shared generation fields and the spec's own
    (validated against ``spec.response_model`` by the caller)."""
    return {**generation_fields(result), **result.spec.respond(result)}


def done_fields(result: AgentResult) -> dict[str, Any]:
    """The payload of a stream's ``done`` event: the answer's text (authoritative: an
    answer tried again or repaired differs from the tokens streamed before it), the validated
    ``output`` of JSON agents, finish reason, usage (tokens), timings (milliseconds),
    attempts, the content check's verdict and the spec's own fields."""
    completion, spec = result.completion, result.spec
    fields: dict[str, Any] = {
        "text": result.text.strip(), "finish_reason": completion.finish_reason,
        "usage": Usage.of(completion).model_dump(), "timings": asdict(completion.timings),
        "attempts": result.attempts, "quality": quality(result),
    }
    if result.output is not None:
        fields["output"] = result.output.model_dump(mode="json")
    return {**record_fields(result), **fields,
            **spec.done_fields(result.text.strip(), result.report)}


async def stream_events(items: AsyncGenerator[Any, None]) -> Events:
    """The runner's stream items as events; closing this closes ``items``.

    Raises what the stream raises (the transport turns it into an ``error`` event), and
    ``GenerationFailed`` when the stream ends without a completion.
    """
    try:
        async for item in items:
            if isinstance(item, Progress):
                yield PROGRESS, item.data
            elif isinstance(item, Meta):
                stamp = item.generation.fields() if item.generation is not None else {}
                yield META, {**stamp, **item.echo,
                             "context_metadata": item.report.model_dump(mode="json")}
            elif isinstance(item, TokenDelta):
                yield TOKEN, {"text": item.text}
            elif isinstance(item, AgentResult):
                yield DONE, done_fields(item)
                return
        raise GenerationFailed("the model stream ended without a completion")
    finally:
        await items.aclose()
