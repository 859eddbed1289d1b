"""Startup and shutdown: build the services, load the model in the background."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
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
    if settings.model.backend == "openai":
        from app.llm.remote import wait_for_server

        def waiting(reason: str) -> None:
            services.model.status, services.model.error = "error", reason

        return await wait_for_server(settings.model, on_retry=waiting)
    from app.llm.llama import LlamaRuntime  # imported here: tests with a fake never load it

    return await asyncio.to_thread(LlamaRuntime.load, settings.model)


async def load_model(services: Services) -> None:
    """Load or reach the model off the event loop and publish it.

    A failure (file missing, not GGUF, server down...) is published on ``/health`` and
    ``/ready`` and the load is retried every ``MODEL_LOAD_RETRY_S`` seconds, so the service
    recovers by itself once the cause goes away.
    """
    while True:
        try:
            generator = await _open_generator(services)
        except ModelUnavailable as error:
            logger.error("model load failed: %s", error.message)
            services.model.status, services.model.error = "error", error.message
        except Exception as error:  # noqa: BLE001 - reported on /health, never crashes startup
            logger.exception("model load failed")
            services.model.status = "error"
            services.model.error = f"unexpected {type(error).__name__} while loading the model"
        else:
            services.set_ready(generator)
            return
        await asyncio.sleep(services.settings.lifecycle.model_load_retry_s)


async def drain(services: Services, then: Callable[[], None]) -> None:
    """Stop taking generations, let running ones finish within ``DRAIN_GRACE_S``, end the
    streams still running with an error event, then call ``then`` (the server's own exit)."""
    scheduler = services.scheduler
    scheduler.begin_drain()
    logger.info("draining: %d running, %d waiting", scheduler.running, scheduler.waiting)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + services.settings.lifecycle.drain_grace_s
    def busy() -> bool:
        return scheduler.busy or services.streams.count > 0

    while busy() and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if busy():
        logger.warning("drain grace period over: ending %d stream(s)", services.streams.count)
        scheduler.stop_streams()
        # a token or two for the streams to send their error event
        await asyncio.sleep(min(1.0, services.settings.lifecycle.drain_grace_s))
    then()


def install_sigterm(services: Services) -> None:
    """On SIGTERM, drain first (readiness fails at once), then hand the signal to the server.

    Only possible in the main thread (uvicorn's own runner); elsewhere (tests running the
    server in a thread) the server's own handling stands.
    """
    loop = asyncio.get_running_loop()
    try:
        server_handler = signal.getsignal(signal.SIGTERM)
        tasks: set[asyncio.Task[None]] = set()

        def exit_server() -> None:
            if callable(server_handler):
                server_handler(signal.SIGTERM, None)

        def start_drain() -> None:
            if not services.scheduler.draining:
                tasks.add(loop.create_task(drain(services, exit_server)))

        def on_sigterm(_signum: int, _frame: object) -> None:
            loop.call_soon_threadsafe(start_drain)

        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        logger.debug("SIGTERM drain not installed (not in the main thread)")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading the model unless a generator was injected (tests), and the archive, then
    serve."""
    services: Services = app.state.services
    install_sigterm(services)
    tasks = [asyncio.create_task(load_archive(services.archive, services.settings.archive))]
    loads_model = services.runner is None
    if loads_model:
        tasks.append(asyncio.create_task(load_model(services)))
    try:
        yield
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await close(services, close_generator=loads_model)


async def close(services: Services, close_generator: bool = True) -> None:
    """Release what the services hold: the runner's threads, the summary cache and, when
    ``close_generator`` (the lifespan loaded it), the generator's own (model thread and the
    prefix cache's disk writes, or HTTP clients)."""
    runner = services.runner
    if runner is not None:
        runner.close()
        if runner.distiller is not None:
            runner.distiller.cache.close()
    aclose = getattr(services.model.generator, "aclose", None)
    if close_generator and aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - shutdown goes on
            logger.exception("closing the model failed")
