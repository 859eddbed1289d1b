"""Startup and shutdown: load the archive and the model in the background, drain on SIGTERM,
close the services at the end (building, opening and closing are :mod:`app.bootstrap`'s)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import bootstrap
from app.archive.service import load_archive
from app.errors import WriterAssistantError
from app.llm.retry import is_retryable, startup_retrying
from app.state import Services

logger = logging.getLogger(__name__)


async def load_model(services: Services) -> None:
    """Load or reach the model off the event loop and publish it with its runner
    (:func:`app.bootstrap.open_model`: ``LLM_BACKEND``'s generator, weights loaded eagerly,
    owned by the services so that :func:`app.bootstrap.close_services` closes it, then the
    runner and its summary cache).

    A failure of any step (file missing, not GGUF, server down or loading, summary cache
    directory unwritable...) is published on ``/health`` and ``/ready`` and retried by the
    startup policy (:func:`app.llm.retry.startup_retrying`: every ``LLM_CONNECT_RETRY_S``
    seconds while a remote server is unreachable or loading, else every
    ``MODEL_LOAD_RETRY_S`` seconds, without end), so the service recovers by itself once the
    cause goes away. The published reason is the domain error's message (it names the setting
    to check, never a path or a library's text); anything else is logged whole and published
    as an unexpected failure. Should the load end any other way than by cancellation or
    success, the model is left ``error``, never ``loading``.
    """
    def failed(error: BaseException, wait_s: float) -> None:
        if is_retryable(error):  # a remote server unreachable, loading or busy
            reason = getattr(error, "message", None) or UNEXPECTED
            logger.warning("model server not ready: %s", reason)
        elif isinstance(error, WriterAssistantError):
            reason = error.message
            logger.error("model load failed: %s", reason)
        else:  # reported on /health, never crashes startup
            logger.error("model load failed", exc_info=error)
            reason = UNEXPECTED
        services.model.status = "error"
        services.model.error = f"{reason} (retrying in {wait_s:g} s)"

    retrying = startup_retrying(services.settings, on_retry=failed)
    try:
        await retrying(bootstrap.open_model, services)
    except asyncio.CancelledError:  # shutdown
        raise
    except BaseException as error:  # outside the retry policy: not retried, never "loading"
        logger.critical("model load stopped; restart the server", exc_info=error)
        services.model.status = "error"
        services.model.error = ("The model could not be set up and is not retried; restart "
                                "the server (see the server log).")
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise


#: The published reason of a failure that is no domain error (the log has the detail).
UNEXPECTED = "The model could not be set up (an unexpected error; see the server log)."


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

    # Polls two counters (the scheduler's turns and the open streams) against a deadline.
    while busy() and loop.time() < deadline:  # noqa: ASYNC110
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


async def purge_generations(services: Services) -> None:
    """Purge the generation records older than ``GENERATIONS_RETENTION_DAYS``: once the
    runner is up (at startup), then every ``GENERATIONS_PURGE_INTERVAL_S``, until cancelled.
    Ends at once when records are off."""
    await services.runner_ready.wait()
    recorder = services.runner.recorder if services.runner is not None else None
    if recorder is not None:
        await recorder.purge_forever()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading the archive and, unless a generator was injected (tests), the model, and
    the purge of expired generation records (:func:`purge_generations`), then serve; at the
    end cancel the loads still running and close the services
    (:func:`app.bootstrap.close_services`: runner threads, summary cache, the model when the
    services opened it, the archive's Chroma clients)."""
    services: Services = app.state.services
    install_sigterm(services)
    tasks = [asyncio.create_task(load_archive(services.archive, services.settings.archive))]
    if services.runner is None:
        tasks.append(asyncio.create_task(load_model(services)))
    tasks.append(asyncio.create_task(purge_generations(services)))
    try:
        yield
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await bootstrap.close_services(services)
