"""``/context/preview``: the assembly report and exact prompt, without generating."""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.agents.registry import REGISTRY
from app.api.v1.agents import ENDPOINTS
from app.schemas.context import _Strict
from app.schemas.responses import ContextPreviewResponse
from app.state import Services, get_services

router = APIRouter(prefix="/context", tags=["context"])

Operation = Enum("Operation", {name.replace("-", "_"): name for name in ENDPOINTS}, type=str)


class ContextPreviewRequest(_Strict):
    """``request`` is the body the named operation's endpoint takes."""

    operation: Operation  # type: ignore[valid-type]
    request: dict[str, Any]


@router.post("/preview", response_model=ContextPreviewResponse)
async def preview(body: ContextPreviewRequest, services: Services = Depends(get_services)):
    """Assemble the prompt ``operation`` would send for ``request`` and report it."""
    name = body.operation.value
    request_model = ENDPOINTS[name][0]
    try:
        request = request_model.model_validate(body.request)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", "request", *e["loc"])} for e in error.errors()]
        ) from None
    runner = services.require_runner()
    prepared = await runner.preview(REGISTRY[name], request)
    messages = prepared.prompt.messages
    return ContextPreviewResponse(
        operation=name,
        prompt=runner.generator.render_prompt(messages),
        messages=[{"role": m.role, "content": m.content} for m in messages],
        context_metadata=prepared.prompt.report,
    )
