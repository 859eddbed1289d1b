"""``/metrics``: the service's figures in the Prometheus text format, for scraping."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.api.errors import REFUSALS, error_responses
from app.observability.metrics import CONTENT_TYPE
from app.state import Services, get_services

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}},
                             "description": "Prometheus text format"},
                       **error_responses(*REFUSALS)})
async def metrics(services: Services = Depends(get_services)) -> Response:
    """Requests running and waiting, rejections by reason, backend errors, time to first
    token, inter-token and end-to-end latency, queue time, prompt and completion tokens,
    archive operation latency (see ``app.observability.metrics``)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
