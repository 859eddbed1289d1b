"""``GET /api/v1/models``: the base model and the LoRA adapters a request may pick."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.errors import MODEL_ERRORS, REFUSALS, error_responses
from app.schemas.models import AdapterInfo, BaseModelInfo, ModelsResponse
from app.state import Services, get_services

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse,
            responses=error_responses(*REFUSALS, *MODEL_ERRORS))
async def list_models(services: Services = Depends(get_services)) -> ModelsResponse:
    """The models a request's `model` may name: `base` (the served model: its name, GGUF
    SHA-256 and n_ctx) and every registered LoRA adapter with its training record. Adapters
    added or removed with `writer-assistant adapters` show at once. 503 `model_unavailable`
    while the model loads."""
    runner = services.require_runner()
    generator = runner.generator
    registered = await runner.off_loop(runner.adapters.registered) if runner.adapters else []
    return ModelsResponse(
        base=BaseModelInfo(name=generator.model_name,
                           sha256=getattr(generator, "sha256", None) or None,
                           n_ctx=generator.n_ctx,
                           runtime=getattr(generator, "runtime", None)),
        adapters=[AdapterInfo(
            id=adapter.name, name=runner.model_label(adapter.ref()),
            sha256=adapter.entry.sha256, size_bytes=adapter.entry.size_bytes,
            lora_alpha=adapter.entry.lora_alpha, base_model=adapter.entry.base_model,
            base_model_sha256=adapter.entry.base_model_sha256,
            created_at=adapter.entry.created_at, training=adapter.record)
            for adapter in registered],
    )
