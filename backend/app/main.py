"""The application factory."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import errors
from app.api.v1 import router as v1_router
from app.config import Settings
from app.lifespan import lifespan
from app.llm.protocol import TextGenerator
from app.observability.logging import configure_logging
from app.state import Services


def create_app(settings: Settings | None = None, generator: TextGenerator | None = None) -> FastAPI:
    """Build the app. With ``generator`` (tests), skip loading the model and use it."""
    settings = settings or Settings()
    configure_logging(settings)
    app = FastAPI(
        title="Writer Assistant",
        version="0.1.0",
        description="Multi-agent story writing on a local GGUF model with layered token budgets.",
        lifespan=lifespan,
    )
    services = Services(settings=settings)
    if generator is not None:
        services.set_ready(generator)
    app.state.services = services
    errors.install(app)
    app.include_router(v1_router.router)
    return app
