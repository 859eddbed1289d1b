"""Startup and shutdown: build the services, load the model in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.archive.service import load_archive
from app.errors import ModelUnavailable
from app.state import Services

logger = logging.getLogger(__name__)


async def load_model(services: Services) -> None:
    """Load the in-process model off the event loop and publish it (or the failure)."""
    from app.llm.llama import LlamaRuntime  # imported here: tests with a fake never load it

    try:
        generator = await asyncio.to_thread(LlamaRuntime.load, services.settings)
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
