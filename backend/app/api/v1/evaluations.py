"""``/api/v1/evaluations``: the base model against base plus a LoRA adapter, as background
jobs (:mod:`app.finetune.jobs`); each tenant sees its own jobs only."""

from __future__ import annotations

import functools

import anyio.to_thread
from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from app.api.errors import BODY_ERRORS, REFUSALS, error_responses
from app.errors import (
    AdapterMismatch,
    AdapterNotFound,
    DatasetInvalid,
    DatasetNotFound,
    EvaluationNotFound,
    InvalidAdapter,
    InvalidRequest,
    ModelUnavailable,
)
from app.finetune.evaluate import voice_style
from app.schemas.evaluations import EvaluationJob, EvaluationRequest
from app.state import Services, get_services
from app.tenancy import current_tenant

router = APIRouter(tags=["evaluations"])

_CREATE = error_responses(*REFUSALS, *BODY_ERRORS, AdapterNotFound, DatasetNotFound,
                          DatasetInvalid, InvalidAdapter, AdapterMismatch, ModelUnavailable)
_READ = error_responses(*REFUSALS, InvalidRequest, EvaluationNotFound)

JobId = PathParam(description="The id POST /api/v1/evaluations answered.", max_length=64)


@router.post("/evaluations", response_model=EvaluationJob, status_code=202,
             responses=_CREATE)
async def create_evaluation(body: EvaluationRequest, response: Response,
                            services: Services = Depends(get_services)) -> EvaluationJob:
    """Queue an evaluation of the adapter ``adapter`` against the base model on the
    validation split of the dataset ``validation`` (both by name, under FINETUNE_DIR):
    perplexity of the real next passages, ROUGE-L and BLEU of greedy continuations, style
    similarity to your voice profile, and side-by-side samples. Answers at once with the job;
    poll ``GET /api/v1/evaluations/{id}``. The files are checked, and the examples read, before
    anything is queued."""
    tenant = current_tenant.get()
    jobs = services.evaluations
    job, adapter, examples = await anyio.to_thread.run_sync(jobs.prepare, tenant, body)
    style = functools.partial(voice_style, services.voices, services.tenant_archive())
    jobs.start(tenant, job, adapter, examples, style)
    response.headers["Location"] = f"/api/v1/evaluations/{job.id}"
    return job


@router.get("/evaluations/{job_id}", response_model=EvaluationJob, responses=_READ)
def get_evaluation(job_id: str = JobId,
                   services: Services = Depends(get_services)) -> EvaluationJob:
    """An evaluation's status (queued, running, done or failed), progress (examples done of
    the total), its error when it failed and its report when done."""
    return services.evaluations.get(current_tenant.get(), job_id)


@router.get("/evaluations/{job_id}/chart.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "The chart."},
                       **_READ})
def evaluation_chart(job_id: str = JobId,
                     services: Services = Depends(get_services)) -> FileResponse:
    """The finished evaluation's metrics, base against tuned, as a PNG chart."""
    return FileResponse(services.evaluations.chart(current_tenant.get(), job_id),
                        media_type="image/png")
