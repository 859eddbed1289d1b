"""The application factory, and the application itself for ``uvicorn app.main:app``.

``app`` is built from the environment (``Settings()``) on first access, not at import: tests
and the CLI import :func:`create_app` without loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.agents.registry import REGISTRY
from app.agents.spec import AgentSpec
from app.api import docs, errors
from app.api.middleware import ApiKeys, BodySizeLimit, RateLimits, UserLimits
from app.api.v1.router import build_router
from app.bootstrap import build_services
from app.config import Settings
from app.lifespan import lifespan
from app.llm.protocol import TextGenerator
from app.observability.logging import configure_logging


def create_app(settings: Settings | None = None, generator: TextGenerator | None = None,
               agents: Mapping[str, AgentSpec] | None = None) -> FastAPI:
    """Build the app on :func:`app.bootstrap.build_services`. With ``generator`` (tests), skip
    loading the model and use it: the runner and its summary cache are built now, and the
    lifespan's end closes them but leaves ``generator`` open (it is the caller's). With
    ``agents``, serve those agent operations instead of the registry's."""
    settings = settings or Settings()
    configure_logging(settings.observability)
    registry = REGISTRY if agents is None else agents
    limits, http = settings.limits, settings.http
    app = docs.docs_app(  # /docs and /redoc on the app's own assets
        title="Writer Assistant",
        version="0.1.0",
        description="Multi-agent story writing on a local GGUF model with layered token budgets.",
        lifespan=lifespan,
    )
    app.state.services = build_services(settings, generator)
    errors.install(app)
    app.include_router(build_router(registry))
    docs.install(app, registry, api_keys=bool(http.api_key_tenants))
    # Added innermost first: request id, then CORS (preflights need no key), body size, API
    # keys (which set the tenant), then the per-user limits that count by tenant, then the
    # docs pages' content security policy.
    app.add_middleware(docs.DocsPolicy)
    rate_limits = RateLimits.from_uri(limits.rate_limit_storage_uri, app.state.services.metrics)
    app.add_middleware(UserLimits, per_minute=limits.rate_limit_per_minute,
                       concurrent=limits.rate_limit_concurrent, limits=rate_limits)
    app.add_middleware(ApiKeys, keys=http.api_key_tenants, docs_need_key=http.docs_require_key,
                       failures_per_minute=limits.rate_limit_auth_failures_per_minute,
                       limits=rate_limits)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_request_bytes)
    if http.cors_origins:
        any_origin = "*" in http.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if any_origin else http.cors_origins,
            allow_credentials=not any_origin,  # never "*" with credentials
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-Id")
    return app


def __getattr__(name: str) -> FastAPI:
    """``app``: the application of ``uvicorn app.main:app``, built by :func:`create_app` from
    the environment on first access and kept (each ``--workers`` process builds its own)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    application = create_app()
    globals()["app"] = application
    return application
