"""``/context/preview``: the assembly report and exact prompt, without generating;
``/context/warm``: a story made ready ahead of time."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.agents.registry import REGISTRY
from app.api.errors import AGENT_ERRORS, REFUSALS, error_responses
from app.api.v1.agents import ENDPOINTS
from app.schemas.context import _Strict
from app.schemas.requests import AgentRequest
from app.schemas.responses import ContextPreviewResponse, ContextWarmResponse
from app.schemas.usage import Usage
from app.state import Services, get_services

router = APIRouter(prefix="/context", tags=["context"],
                   responses=error_responses(*REFUSALS, *AGENT_ERRORS))

Operation = Enum("Operation", {name.replace("-", "_"): name for name in ENDPOINTS}, type=str)


class ContextPreviewRequest(_Strict):
    """``request`` is the body the named operation's endpoint takes."""

    operation: Operation  # type: ignore[valid-type]
    request: dict[str, Any]


def _parsed(body: ContextPreviewRequest) -> tuple[str, AgentRequest]:
    """The operation's name and its request, validated as its endpoint would.

    Raises:
        RequestValidationError: the request does not fit the operation (HTTP 422, with the
            location under ``request``).
    """
    name = body.operation.value
    try:
        return name, ENDPOINTS[name][0].model_validate(body.request)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", "request", *e["loc"])} for e in error.errors()]
        ) from None


@router.post("/preview", response_model=ContextPreviewResponse)
async def preview(body: ContextPreviewRequest, services: Services = Depends(get_services)):
    """Assemble the prompt ``operation`` would send for ``request`` and report it."""
    name, request = _parsed(body)
    runner = services.require_runner()
    prepared = await runner.preview(REGISTRY[name], request)
    messages = prepared.prompt.messages
    return ContextPreviewResponse(
        operation=name,
        prompt=runner.generator.render_prompt(messages),
        messages=[{"role": m.role, "content": m.content} for m in messages],
        context_metadata=prepared.prompt.report,
    )


@router.post("/warm", response_model=ContextWarmResponse)
async def warm(body: ContextPreviewRequest, services: Services = Depends(get_services)):
    """Get a story ready before the author asks: distill its context and process its prompt
    for ``operation`` once (one completion token, discarded), at background priority (every
    interactive request goes first). The story's shared block is then in the model's prefix
    cache, so every agent's first call on it is warm."""
    name, request = _parsed(body)
    prepared, completion = await services.require_runner().warm(REGISTRY[name], request)
    report = prepared.prompt.report
    return ContextWarmResponse(
        operation=name, model=report.model, shared_prefix_tokens=report.shared_prefix_tokens,
        usage=Usage.of(completion), timings=asdict(completion.timings), context_metadata=report,
    )
