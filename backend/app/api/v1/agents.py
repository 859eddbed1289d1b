"""The routes of the agent operations, generated from a registry of specs.

Each :class:`~app.agents.spec.AgentSpec` gets a JSON route (``spec.route``) and, when it
streams, a Server-Sent Events route (``spec.stream_route``): ``progress`` (one per summary
made while distilling the context), ``meta`` (the echoed fields and the assembly report),
``token`` (text as it is produced), then ``done`` or ``error``. Their request and response
models, summaries, tags and documented errors all come from the spec and the error table.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations,
# which are closure variables, at registration time.

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from app.agents.events import response_body, stream_events
from app.agents.spec import AgentSpec
from app.agents.variants import Scorer, Variants
from app.api.disconnect import unless_disconnected
from app.api.errors import AGENT_ERRORS, ARCHIVE_ERRORS, REFUSALS, error_responses
from app.api.sse import sse_response
from app.api.v1.voice import carry_notes
from app.errors import WriterAssistantError
from app.state import Services, get_services

logger = logging.getLogger(__name__)

#: What a Server-Sent Events route answers with a 200.
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}},
                         "description": "progress..., meta, token..., then done or error"}}


def _errors(spec: AgentSpec) -> dict[int | str, dict[str, Any]]:
    archive = ARCHIVE_ERRORS if spec.retrieval_query is not None else ()
    return error_responses(*REFUSALS, *AGENT_ERRORS, *archive)


def scorer_for(services: Services) -> Callable[[Any], Scorer]:
    """The variant scorer of a request: its story's chapters, the tenant's archive embedding
    model (none while the archive is off or loading) and the tenant's voice profile."""
    archive = services.tenant_archive()

    def scorer(request: Any) -> Scorer:
        story = [chapter.content for chapter in request.structured_context.chapters]
        if archive is None:
            return Scorer(story)
        try:
            voice = services.voices.centroid(archive)
        except WriterAssistantError as error:  # variants are still scored, without style
            logger.warning("no voice profile for scoring variants: %s", error.code)
            voice = None
        return Scorer(story, embed=archive.embedder.embed, voice=voice)

    return scorer


def cache_control(request: Request, body: Any) -> Any:
    """``body`` with ``cache`` false when the request says ``Cache-Control: no-cache`` (or
    ``no-store``): the response cache is skipped and the answer generated."""
    directives = {part.strip().lower()
                  for part in request.headers.get("cache-control", "").split(",")}
    if directives & {"no-cache", "no-store"} and getattr(body, "cache", False):
        return body.model_copy(update={"cache": False})
    return body


def _variants(services: Services, registry: Mapping[str, AgentSpec]) -> Variants:
    return Variants(services.require_runner(), registry, scorer_for(services))


def add_agent_routes(router: APIRouter, spec: AgentSpec,
                     registry: Mapping[str, AgentSpec] | None = None) -> None:
    """Register ``spec``'s JSON route and, when it streams, its Server-Sent Events route. A
    request with ``n`` > 1 (the prose operations) is answered with variants of ``registry``'s
    team (:mod:`app.agents.variants`)."""
    request_model = spec.request_model
    name = spec.operation.replace("-", "_")
    team = registry if registry is not None else {spec.operation: spec}

    if spec.json_route:
        async def run(body: request_model, request: Request,  # type: ignore[valid-type]
                      services: Services = Depends(get_services)) -> BaseModel | Response:
            body = await carry_notes(services, cache_control(request, body))
            if getattr(body, "n", 1) > 1:
                variants = await unless_disconnected(
                    request, _variants(services, team).run(spec, body))
                if isinstance(variants, Response):
                    return variants
                return spec.response_model.model_validate(variants)
            result = await unless_disconnected(request,
                                               services.require_runner().run(spec, body))
            if isinstance(result, Response):  # the client left
                return result
            return spec.response_model.model_validate(response_body(result))

        run.__name__ = name
        router.add_api_route(
            spec.route, run, methods=["POST"], response_model=spec.response_model,
            summary=spec.summary or spec.operation, tags=[spec.tag], responses=_errors(spec),
        )
    if not spec.streams:
        return

    async def stream(body: request_model, request: Request,  # type: ignore[valid-type]
                     services: Services = Depends(get_services)) -> EventSourceResponse:
        body = await carry_notes(services, cache_control(request, body))
        if getattr(body, "n", 1) > 1:
            events = await _variants(services, team).stream(spec, body)
        else:
            events = stream_events(await services.require_runner().stream(spec, body))
        return sse_response(events, services.settings.http, services.streams)

    stream.__name__ = f"{name}_stream"
    summary = spec.summary or spec.operation
    if spec.json_route:
        summary += ", streamed as Server-Sent Events"
    router.add_api_route(
        spec.stream_route, stream, methods=["POST"], summary=summary, tags=[spec.tag],
        responses={**STREAM_RESPONSE, **_errors(spec)},
    )


def agents_router(registry: Mapping[str, AgentSpec]) -> APIRouter:
    """The routes of every operation in ``registry`` (paths relative to ``/api/v1``)."""
    router = APIRouter()
    for spec in registry.values():
        add_agent_routes(router, spec, registry)
    return router
