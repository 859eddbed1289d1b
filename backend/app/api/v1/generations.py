"""``/api/v1/generations``: every generation on the record, listed, read, deleted and
replayed (:mod:`app.generations`, :mod:`app.generations.replay`). Records are the tenant's own:
another tenant's answers 404."""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations.

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.agents.spec import AgentSpec
from app.api.disconnect import unless_disconnected
from app.api.errors import AGENT_ERRORS, REFUSALS, error_responses
from app.errors import (
    GenerationNotFound,
    GenerationStoreUnavailable,
    InvalidRequest,
    ModelUnavailable,
    ReplayRequestMismatch,
)
from app.generations.recorder import Recorder
from app.generations.records import (
    MAX_OFFSET,
    GenerationRecord,
    GenerationSummary,
    RecordQuery,
)
from app.generations.replay import replay
from app.schemas.generations import GenerationList, ReplayRequest, ReplayResponse
from app.state import Services, get_services
from app.tenancy import current_tenant

_READ = error_responses(*REFUSALS, InvalidRequest, GenerationNotFound,
                        GenerationStoreUnavailable, ModelUnavailable)


def _recorder(services: Services) -> Recorder:
    """The runner's recorder.

    Raises:
        ModelUnavailable: the model (and with it the store) is not up yet (503).
        GenerationStoreUnavailable: records are off (GENERATIONS_ENABLED).
    """
    recorder = services.require_runner().recorder
    if recorder is None:
        raise GenerationStoreUnavailable(
            "Generation records are off on this server (GENERATIONS_ENABLED).")
    return recorder


async def _record(services: Services, generation_id: str) -> GenerationRecord:
    record = await _recorder(services).get(current_tenant.get(), generation_id)
    if record is None:
        raise GenerationNotFound(f"No generation {generation_id} (deleted, purged after "
                                 "GENERATIONS_RETENTION_DAYS, or never made).")
    return record


def generations_router(registry: Mapping[str, AgentSpec]) -> APIRouter:
    """The routes of the generation records; replays run the operations of ``registry``."""
    router = APIRouter(tags=["generations"])

    @router.get("/generations", response_model=GenerationList, responses=_READ,
                summary="List generation records")
    async def list_generations(
        services: Annotated[Services, Depends(get_services)],
        story_id: Annotated[str | None, Query(max_length=200)] = None,
        operation: Annotated[str | None, Query(max_length=100)] = None,
        since: Annotated[datetime | None, Query(description="ISO 8601; inclusive.")] = None,
        until: Annotated[datetime | None, Query(description="ISO 8601; exclusive.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> GenerationList:
        """The tenant's records, newest first, filtered by story id (the request's
        `story_id` or the story metadata's), operation and time, one page at a time."""
        query = RecordQuery(story_id=story_id, operation=operation, since=since, until=until,
                            limit=limit, offset=offset)
        records, total = await _recorder(services).find(current_tenant.get(), query)
        following = offset + len(records)
        return GenerationList(items=[GenerationSummary.of(r) for r in records], total=total,
                              limit=limit, offset=offset,
                              next_offset=following if following < total else None)

    @router.get("/generations/{generation_id}", response_model=GenerationRecord,
                responses=_READ, summary="A generation record")
    async def get_generation(generation_id: str,
                             services: Annotated[Services, Depends(get_services)]
                             ) -> GenerationRecord:
        """The whole record: request digest (and the request, when stored), model file,
        sampling with the seed, prompt digest, output, usage, timings and assembly report."""
        return await _record(services, generation_id)

    @router.delete("/generations/{generation_id}", status_code=204, responses=_READ,
                   summary="Delete a generation record")
    async def delete_generation(generation_id: str,
                                services: Annotated[Services, Depends(get_services)]
                                ) -> Response:
        """Delete the record (and its response cache entry)."""
        if not await _recorder(services).delete(current_tenant.get(), generation_id):
            raise GenerationNotFound(f"No generation {generation_id}.")
        return Response(status_code=204)

    @router.post("/generations/{generation_id}/replay", response_model=ReplayResponse,
                 responses=error_responses(*REFUSALS, *AGENT_ERRORS, GenerationNotFound,
                                           GenerationStoreUnavailable, ReplayRequestMismatch),
                 summary="Replay a generation")
    async def replay_generation(generation_id: str, request: Request,
                                services: Annotated[Services, Depends(get_services)],
                                body: ReplayRequest | None = None,
                                ) -> ReplayResponse | Response:
        """Run the generation again with the same request, prompt and sampling (seed
        included), never from the cache, and say whether the output is byte-identical. Send
        the request as `request` when it was not stored (store_request)."""
        record = await _record(services, generation_id)
        runner = services.require_runner()
        outcome = await unless_disconnected(request, replay(
            runner, registry, record, body.request if body is not None else None))
        if isinstance(outcome, Response):  # the client left
            return outcome
        return ReplayResponse(replay_of=record.id, generation_id=outcome.generation_id,
                              identical=outcome.identical,
                              prompt_identical=outcome.prompt_identical,
                              model_identical=outcome.model_identical,
                              first_difference=outcome.first_difference,
                              text=outcome.text, recorded_text=record.text)

    return router
