"""``/chapter-pipeline`` and its ``/stream`` twin: a chapter drafted, critiqued and revised by
the team in one request (:mod:`app.agents.pipeline`)."""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations.

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sse_starlette import EventSourceResponse

from app.agents.pipeline import OPERATIONS, ChapterPipeline
from app.agents.spec import AgentSpec
from app.api.disconnect import unless_disconnected
from app.api.errors import AGENT_ERRORS, ARCHIVE_ERRORS, REFUSALS, error_responses
from app.api.sse import sse_response
from app.api.v1.agents import cache_control
from app.api.v1.voice import carry_notes
from app.schemas.pipeline import ChapterPipelineRequest, ChapterPipelineResponse
from app.state import Services, get_services

#: What the stream route answers with a 200.
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {}},
    "description": "per round: phase, progress..., token..., draft, suggestion..., score...; "
                   "then done (the full record) or error (when the first draft failed)"}}


def pipeline_router(registry: Mapping[str, AgentSpec]) -> APIRouter:
    """The pipeline's routes, when ``registry`` has the operations it calls (else none)."""
    router = APIRouter(tags=["pipeline"],
                       responses=error_responses(*REFUSALS, *AGENT_ERRORS, *ARCHIVE_ERRORS))
    if not all(operation in registry for operation in OPERATIONS.values()):
        return router

    @router.post("/chapter-pipeline", response_model=ChapterPipelineResponse,
                 summary="Chapter pipeline: draft, critique and revise")
    async def chapter_pipeline(body: ChapterPipelineRequest, request: Request,
                               services: Services = Depends(get_services)
                               ) -> ChapterPipelineResponse | Response:
        """The writer drafts the chapter; the editor suggests changes and the raters score
        it; the writer revises it with the selected suggestions; again until the mean score
        reaches ``min_score`` or ``max_rounds`` drafts were written. A failure after the first
        draft still answers 200 with every draft so far and the error
        (``stopped_because: "error"``)."""
        pipeline = ChapterPipeline(services.require_runner(), registry)
        body = await carry_notes(services, cache_control(request, body))
        return await unless_disconnected(request, pipeline.run(body))

    @router.post("/chapter-pipeline/stream", responses=STREAM_RESPONSE,
                 summary="Chapter pipeline, streamed as Server-Sent Events")
    async def chapter_pipeline_stream(body: ChapterPipelineRequest, request: Request,
                                      services: Services = Depends(get_services)
                                      ) -> EventSourceResponse:
        """The pipeline's progress as it happens; closing the stream stops the call in
        progress within a token."""
        pipeline = ChapterPipeline(services.require_runner(), registry)
        events = await pipeline.stream(
            await carry_notes(services, cache_control(request, body)))
        return sse_response(events, services.settings.http, services.streams)

    return router
