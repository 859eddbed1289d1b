"""``/health``: answers while the model loads and reports its state."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.schemas.responses import HealthResponse
from app.state import Services, get_services

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health(services: Services = Depends(get_services)) -> HealthResponse:
    """Service liveness and the model's state (loading, ready, or error with the reason)."""
    model = services.model
    generator = model.generator
    return HealthResponse(
        model_status=model.status,
        model=generator.model_name if generator else None,
        n_ctx=generator.n_ctx if generator else None,
        error=model.error,
    )
