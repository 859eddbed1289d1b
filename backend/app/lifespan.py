"""Startup and shutdown: build the services, load the model in the background."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.archive.service import load_archive
from app.config import Settings
from app.errors import ModelUnavailable
from app.llm.protocol import TextGenerator
from app.llm.retry import is_retryable, startup_retrying
from app.state import Services

logger = logging.getLogger(__name__)


async def _open_generator(settings: Settings) -> TextGenerator:
    """One attempt at the generator ``LLM_BACKEND`` names: the in-process model, loaded in a
    worker thread, or a remote server, reached and checked in one."""
    if settings.model.backend == "openai":
        from app.llm.remote import RemoteGenerator

        return await asyncio.to_thread(RemoteGenerator.connect, settings.model)
    from app.llm.llama import LlamaRuntime  # imported here: tests with a fake never load it

    return await asyncio.to_thread(LlamaRuntime.load, settings.model)


async def load_model(services: Services) -> None:
    """Load or reach the model off the event loop and publish it.

    A failure (file missing, not GGUF, server down or loading...) is published on ``/health``
    and ``/ready`` and retried by the startup policy (:func:`app.llm.retry.startup_retrying`:
    every ``LLM_CONNECT_RETRY_S`` seconds while a remote server is unreachable or loading,
    else every ``MODEL_LOAD_RETRY_S`` seconds, without end), so the service recovers by itself
    once the cause goes away.
    """
    def failed(error: BaseException, wait_s: float) -> None:
        if is_retryable(error):  # a remote server unreachable, loading or busy
            reason = getattr(error, "message", str(error))
            logger.warning("model server not ready: %s", reason)
        elif isinstance(error, ModelUnavailable):
            reason = error.message
            logger.error("model load failed: %s", reason)
        else:  # reported on /health, never crashes startup
            logger.error("model load failed", exc_info=error)
            reason = f"unexpected {type(error).__name__} while loading the model"
        services.model.status = "error"
        services.model.error = f"{reason} (retrying in {wait_s:g} s)"

    retrying = startup_retrying(services.settings, on_retry=failed)
    services.set_ready(await retrying(_open_generator, services.settings))


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
