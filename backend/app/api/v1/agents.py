"""One POST endpoint per agent operation, generated from the registry.

Chapter operations (``spec.streams``) also get a ``/stream`` twin that answers Server-Sent
Events: ``progress`` (one per summary made while distilling the context), ``meta`` (assembly
report), ``token`` (text as it is produced), then ``done`` or ``error``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations,
# which are closure variables, at registration time.

from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from app.agents.registry import REGISTRY
from app.agents.runner import AgentResult, Meta, Progress
from app.api.disconnect import unless_disconnected
from app.api.sse import DONE, META, PROGRESS, TOKEN, sse_response
from app.llm.protocol import Completion, TokenDelta
from app.schemas import requests as rq
from app.schemas import responses as rs
from app.schemas.usage import Usage
from app.state import Services, get_services

router = APIRouter(tags=["agents"])

Payload = Callable[[AgentResult], dict[str, Any]]


def _output(result: AgentResult) -> dict[str, Any]:
    return result.output.model_dump() if result.output is not None else {}


#: operation -> (request model, response model, payload of the response).
ENDPOINTS: dict[str, tuple[type[rq.AgentRequest], type[BaseModel], Payload]] = {
    "generate-chapter": (
        rq.GenerateChapterRequest, rs.ChapterResponse,
        lambda r: {**r.task.summary, "chapter_text": r.text},
    ),
    "modify-chapter": (
        rq.ModifyChapterRequest, rs.ModifyChapterResponse,
        lambda r: {**r.task.summary, "modified_chapter": r.text},
    ),
    "flesh-out": (
        rq.FleshOutRequest, rs.FleshOutResponse, lambda r: {"fleshed_out_text": r.text},
    ),
    "editor-review": (
        rq.EditorReviewRequest, rs.EditorReviewResponse,
        lambda r: {**r.task.summary, **_output(r)},
    ),
    "character-feedback": (
        rq.CharacterFeedbackRequest, rs.CharacterFeedbackResponse,
        lambda r: {**r.task.summary, **_output(r)},
    ),
    "rater-feedback": (rq.RaterFeedbackRequest, rs.RaterFeedbackResponse, _output),
    "generate-character-details": (
        rq.CharacterDetailsRequest, rs.CharacterDetailsResponse,
        lambda r: {**r.task.summary, "details": _output(r)},
    ),
    "regenerate-bio": (
        rq.RegenerateBioRequest, rs.RegenerateBioResponse,
        lambda r: {**r.task.summary, "bio": r.text},
    ),
    "generate-chapter-outlines": (
        rq.ChapterOutlinesRequest, rs.ChapterOutlinesResponse, _output,
    ),
    "llm-chat": (
        rq.LlmChatRequest, rs.LlmChatResponse,
        lambda r: {"message": {"role": "assistant", "content": r.text}},
    ),
}


def generation_info(result: AgentResult) -> dict[str, Any]:
    """The fields every agent response shares."""
    completion = result.completion
    return {
        "model": result.report.model,
        "finish_reason": completion.finish_reason,
        "usage": Usage.of(completion),
        "timings": asdict(completion.timings),
        "attempts": result.attempts,
        "context_metadata": result.report,
    }


async def _events(items: AsyncIterator[Any]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Map runner stream items onto SSE event names and payloads."""
    try:
        async for item in items:
            if isinstance(item, Progress):
                yield PROGRESS, item.data
            elif isinstance(item, Meta):
                yield META, {**item.summary,
                             "context_metadata": item.report.model_dump(mode="json")}
            elif isinstance(item, TokenDelta):
                yield TOKEN, {"text": item.text}
            elif isinstance(item, Completion):
                yield DONE, {
                    "text": item.text.strip(),
                    "finish_reason": item.finish_reason,
                    "usage": Usage.of(item).model_dump(),
                    "timings": asdict(item.timings),
                }
    finally:
        await items.aclose()


def _register(operation: str) -> None:
    spec = REGISTRY[operation]
    request_model, response_model, payload = ENDPOINTS[operation]

    async def run(body: request_model, request: Request,  # type: ignore[valid-type]
                  services: Services = Depends(get_services)):
        result = await unless_disconnected(request, services.require_runner().run(spec, body))
        if isinstance(result, Response):  # the client left
            return result
        return response_model.model_validate({**generation_info(result), **payload(result)})

    run.__name__ = operation.replace("-", "_")
    router.add_api_route(
        f"/{operation}", run, methods=["POST"], response_model=response_model,
        summary=f"{spec.agent.capitalize()} agent: {operation.replace('-', ' ')}",
    )
    if not spec.streams:
        return

    async def stream(body: request_model, services: Services = Depends(get_services)):  # type: ignore[valid-type]
        items = await services.require_runner().stream(spec, body)
        return sse_response(_events(items), services.settings.http, services.streams)

    stream.__name__ = f"{run.__name__}_stream"
    router.add_api_route(
        f"/{operation}/stream", stream, methods=["POST"],
        summary=f"{operation.replace('-', ' ').capitalize()}, streamed as Server-Sent Events",
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "meta, token..., then done or error"}},
    )


for _operation in ENDPOINTS:
    _register(_operation)
