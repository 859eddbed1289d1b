"""``/health`` (liveness, and the model's state) and ``/ready`` (readiness)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends

from app.api.errors import ErrorResponse, error_response, error_responses
from app.errors import NotReady, WriterAssistantError
from app.schemas.responses import HealthResponse, ReadyResponse
from app.state import Services, get_services

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health(services: Services = Depends(get_services)) -> HealthResponse:
    """Liveness: answers at once, from memory, touching neither the model nor Chroma. Reports
    the model's state (loading, ready, or error with the reason)."""
    model = services.model
    generator = model.generator
    return HealthResponse(
        model_status=model.status,
        model=generator.model_name if generator else None,
        n_ctx=generator.n_ctx if generator else None,
        error=model.error,
    )


async def _not_ready_reasons(services: Services) -> list[str]:
    reasons = []
    if services.scheduler.draining:
        reasons.append("draining")
    if services.model.status == "loading":
        reasons.append("model_loading")
    elif services.model.status == "error":
        reasons.append("model_error")
    archive = services.archive
    if archive.status in ("loading", "error"):
        reasons.append(f"archive_{archive.status}")
    elif archive.archive is not None:
        try:
            # A real round trip (bounded by CHROMA_TIMEOUT_S), not the cached collection, on
            # anyio's worker threads: archive uploads fill the default pool, never these.
            await anyio.to_thread.run_sync(archive.archive.store.ping)
        except WriterAssistantError:  # not answering, or the collection no longer opens
            reasons.append("archive_unreachable")
    return reasons


@router.get("/ready", response_model=ReadyResponse, responses=error_responses(NotReady))
async def ready(services: Services = Depends(get_services)) -> ReadyResponse | ErrorResponse:
    """Readiness: 200 when the model is loaded, the archive (if enabled) reachable and the
    server not draining; otherwise 503 ``not_ready`` with reason codes in
    ``error.details.reasons`` (``draining``, ``model_loading``, ``model_error``,
    ``archive_loading``, ``archive_error``, ``archive_unreachable``)."""
    reasons = await _not_ready_reasons(services)
    if not reasons:
        return ReadyResponse()
    detail = services.model.error or services.archive.error
    message = "Not ready: " + ", ".join(reasons) + (f" ({detail})" if detail else "")
    # Not counted as a refusal: probes ask often, and the answer is the server's state.
    return error_response(NotReady(message, reasons=reasons), record=False)
