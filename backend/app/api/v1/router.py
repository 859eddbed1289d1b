"""All routes: ``/api/v1/...`` plus ``/health`` at the root for probes and ``/metrics`` for
Prometheus.

The agent routes' error responses (the middleware's refusals and an agent operation's errors)
are documented here, from the one table; the other modules document their own.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.errors import AGENT_ERRORS, REFUSALS, error_responses
from app.api.v1 import agents, archive, context, health, metrics, tokens

API_PREFIX = "/api/v1"

router = APIRouter()
router.include_router(agents.router, prefix=API_PREFIX,
                      responses=error_responses(*REFUSALS, *AGENT_ERRORS))
router.include_router(tokens.router, prefix=API_PREFIX)
router.include_router(context.router, prefix=API_PREFIX)
router.include_router(archive.router, prefix=API_PREFIX)
router.include_router(health.router, prefix=API_PREFIX)
router.include_router(health.router)
router.include_router(metrics.router)
