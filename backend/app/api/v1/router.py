"""All routes: ``/api/v1/...`` plus ``/health`` at the root for probes and ``/metrics`` for
Prometheus. The agent and context routes are generated from a registry of agent specs."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter

from app.agents.spec import AgentSpec
from app.api.v1 import archive, evaluations, health, metrics, models, tokens, voice
from app.api.v1.agents import agents_router
from app.api.v1.context import context_router
from app.api.v1.generations import generations_router
from app.api.v1.pipeline import pipeline_router

API_PREFIX = "/api/v1"


def build_router(registry: Mapping[str, AgentSpec]) -> APIRouter:
    """Every route of the service, the agent operations of ``registry`` included."""
    router = APIRouter()
    router.include_router(agents_router(registry), prefix=API_PREFIX)
    router.include_router(tokens.router, prefix=API_PREFIX)
    router.include_router(models.router, prefix=API_PREFIX)
    router.include_router(context_router(registry), prefix=API_PREFIX)
    router.include_router(pipeline_router(registry), prefix=API_PREFIX)
    router.include_router(generations_router(registry), prefix=API_PREFIX)
    router.include_router(archive.router, prefix=API_PREFIX)
    router.include_router(voice.router, prefix=API_PREFIX)
    router.include_router(evaluations.router, prefix=API_PREFIX)
    router.include_router(health.router, prefix=API_PREFIX)
    router.include_router(health.router)
    router.include_router(metrics.router)
    return router
