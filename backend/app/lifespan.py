"""Startup and shutdown: build the services, load the model in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.archive.service import load_archive
from app.errors import ModelUnavailable
from app.llm.protocol import TextGenerator
from app.state import Services

logger = logging.getLogger(__name__)


async def _open_generator(services: Services) -> TextGenerator:
    """The generator ``LLM_BACKEND`` names: the in-process model, loaded in a worker thread, or
    a remote server, reached (retrying while it is down or loading; /health says why meanwhile)
    and checked."""
    settings = services.settings
    if settings.llm_backend == "openai":
        from app.llm.remote import wait_for_server

        def waiting(reason: str) -> None:
            services.model.status, services.model.error = "error", reason

        return await wait_for_server(settings, on_retry=waiting)
    from app.llm.llama import LlamaRuntime  # imported here: tests with a fake never load it

    return await asyncio.to_thread(LlamaRuntime.load, settings)


async def load_model(services: Services) -> None:
    """Load or reach the model off the event loop and publish it (or the failure)."""
    try:
        generator = await _open_generator(services)
    except ModelUnavailable as error:
        logger.error("model load failed: %s", error.message)
        services.model.status, services.model.error = "error", error.message
        return
    except Exception as error:  # noqa: BLE001 - reported on /health, never crashes startup
        logger.exception("model load failed")
        services.model.status = "error"
        services.model.error = f"unexpected {type(error).__name__} while loading the model"
        return
    services.set_ready(generator)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading the model unless a generator was injected (tests), and the archive, then
    serve."""
    services: Services = app.state.services
    tasks = [asyncio.create_task(load_archive(services.archive, services.settings))]
    if services.runner is None:
        tasks.append(asyncio.create_task(load_model(services)))
    try:
        yield
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
