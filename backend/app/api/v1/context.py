"""``/context/preview``: the assembly report and exact prompt, without generating;
``/context/warm``: a story made ready ahead of time. Both take any operation of the
registry, by name, with the body its route takes."""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations,
# which are closure variables, at registration time.

from collections.abc import Mapping
from dataclasses import asdict
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError, create_model

from app.agents.spec import AgentSpec
from app.api.errors import AGENT_ERRORS, ARCHIVE_ERRORS, REFUSALS, error_responses
from app.schemas.context import _Strict
from app.schemas.responses import ContextPreviewResponse, ContextWarmResponse, TimingsOut
from app.schemas.usage import Usage
from app.state import Services, get_services


def context_router(registry: Mapping[str, AgentSpec]) -> APIRouter:
    """``/context/preview`` and ``/context/warm`` over the operations of ``registry``."""
    router = APIRouter(prefix="/context", tags=["context"],
                       responses=error_responses(*REFUSALS, *AGENT_ERRORS, *ARCHIVE_ERRORS))
    operation_enum = Enum(  # type: ignore[misc]
        "Operation", {name.replace("-", "_"): name for name in registry}, type=str)
    request_model = create_model(
        "ContextPreviewRequest", __base__=_Strict, __doc__=(
            "``request`` is the body the named operation's endpoint takes."),
        operation=(operation_enum, ...), request=(dict[str, Any], ...))

    def parsed(body: Any) -> tuple[AgentSpec, Any]:
        """The operation's spec and its request, validated as its route would.

        Raises:
            RequestValidationError: the request does not fit the operation (HTTP 422, with
                the location under ``request``).
        """
        spec = registry[body.operation.value]
        try:
            return spec, spec.request_model.model_validate(body.request)
        except ValidationError as error:
            raise RequestValidationError(
                [{**e, "loc": ("body", "request", *e["loc"])} for e in error.errors()]
            ) from None

    @router.post("/preview", response_model=ContextPreviewResponse)
    async def preview(body: request_model,
                      services: Services = Depends(get_services)) -> ContextPreviewResponse:
        """Assemble the prompt ``operation`` would send for ``request`` and report it."""
        spec, request = parsed(body)
        runner = services.require_runner()
        prepared = await runner.preview(spec, request)
        messages = prepared.prompt.messages
        return ContextPreviewResponse(
            operation=spec.operation,
            prompt=runner.generator.render_prompt(messages),
            messages=[{"role": m.role, "content": m.content} for m in messages],
            context_metadata=prepared.prompt.report,
        )

    @router.post("/warm", response_model=ContextWarmResponse)
    async def warm(body: request_model,
                   services: Services = Depends(get_services)) -> ContextWarmResponse:
        """Get a story ready before the author asks: distill its context and process its
        prompt for ``operation`` once (one completion token, discarded), at background
        priority (every interactive request goes first). The story's shared block is then in
        the model's prefix cache, so every agent's first call on it is warm."""
        spec, request = parsed(body)
        prepared, completion = await services.require_runner().warm(spec, request)
        report = prepared.prompt.report
        return ContextWarmResponse(
            operation=spec.operation, model=report.model,
            shared_prefix_tokens=report.shared_prefix_tokens, usage=Usage.of(completion),
            timings=TimingsOut(**asdict(completion.timings)), context_metadata=report,
        )

    return router
