"""Building and closing the services: the one place that opens the model, builds the runner
and the app's collaborators, and releases them again.

- :func:`open_generator` selects the model from ``LLM_BACKEND`` (one attempt, blocking).
- :func:`build_services` creates every collaborator of :class:`app.state.Services`.
- :func:`build_runner` puts the agent runner (with its summary cache) on a ready generator;
  :func:`attach_generator` publishes both on the services; :func:`open_model` opens the
  generator and attaches it (one attempt).
- :func:`close_services` releases what startup opened; the lifespan's ``finally`` and
  :func:`services_for_cli` call it.

The server (:mod:`app.lifespan`) loads the model eagerly, under the startup retry policy; the
command line (:func:`services_for_cli`) opens it once, lazily (weights on the first
generation). Both go through :func:`open_generator`, looked up on this module when called, so
tests replace it with ``monkeypatch.setattr(bootstrap, "open_generator", ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import diskcache

from app.agents.runner import AgentRunner, RunnerSettings
from app.api.sse import OpenStreams
from app.archive.retrieval import archive_context, archive_search
from app.archive.service import ArchiveState, load_archive
from app.config import Settings, warn_unknown_settings
from app.context.summaries import SummaryCache
from app.errors import GenerationStoreUnavailable, ModelUnavailable
from app.finetune.jobs import EvaluationJobs
from app.finetune.registry import AdapterRegistry
from app.generations.recorder import Recorder
from app.generations.records import ModelIdentity
from app.llm.protocol import TextGenerator
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.state import ModelState, Services

if TYPE_CHECKING:
    from app.archive.service import Archive

logger = logging.getLogger(__name__)


def open_generator(settings: Settings, *, lazy: bool = False) -> TextGenerator:
    """Open the model ``LLM_BACKEND`` names; one attempt, blocking (run it in a thread from
    async code; the server retries it with :func:`app.llm.retry.startup_retrying`).

    - ``openai``: a :class:`~app.llm.remote.RemoteGenerator`, reached and checked (its HTTP
      clients are opened).
    - ``llama_cpp``: with ``lazy`` (the command line), a :class:`~app.llm.lazy.LazyModel` that
      reads only the GGUF's vocabulary now and loads the weights on the first generation;
      else (the server) a :class:`~app.llm.llama.LlamaRuntime` with its weights loaded, its
      model thread and, with ``PREFIX_CACHE_ENABLED``, its prefix cache opened.

    Every one has an ``aclose`` that releases what it opened (:func:`close_services` calls it).

    Raises:
        ModelUnavailable: the file is missing, not GGUF or fails to load; the server is
            unreachable or loading (``error.retryable``), refuses the key, serves no model,
            or its tokenizer disagrees with the local one.
    """
    # imported here: tests on a fake never import llama.cpp or the HTTP client
    if settings.model.backend == "openai":
        from app.llm.remote import RemoteGenerator

        return RemoteGenerator.connect(settings.model)
    if lazy:
        from app.llm.lazy import LazyModel

        return LazyModel.open(settings.model)
    from app.llm.llama import LlamaRuntime

    return LlamaRuntime.load(settings.model)


def build_services(settings: Settings, generator: TextGenerator | None = None) -> Services:
    """The services of one app (or one command), every collaborator created here: the
    metrics (their own registry, tracking the queue and the prefix cache), the scheduler
    (``QUEUE_MAX_WAITING``, ``QUEUE_MAX_WAIT_S``, ``PROMOTE_AFTER_S``), the open-streams
    count, the archive's state (``disabled`` unless ``ARCHIVE_ENABLED``, else ``loading``
    until :func:`app.archive.service.load_archive` runs) and the evaluation jobs (on disk
    under ``EVALUATIONS_DIR``, taking background turns of the scheduler).

    With ``generator`` (tests), the runner is built on it at once (:func:`attach_generator`,
    which opens the summary cache) and the generator is marked as not the services' own:
    :func:`close_services` leaves it open. Without, the model stays ``loading`` until the
    lifespan or :func:`services_for_cli` attaches one. Opens nothing else; raises nothing.

    Logs a warning for each variable of the environment or ``.env`` that looks like a setting
    but is none (:func:`app.config.warn_unknown_settings`: ``LLM_NCTX``, did you mean
    ``LLM_N_CTX``?), since a misspelt setting is otherwise silently ignored.
    """
    warn_unknown_settings()
    limits = settings.limits
    metrics = Metrics()
    scheduler = Scheduler(limits.queue_max_waiting, limits.queue_max_wait_s,
                          limits.promote_after_s)
    archive = ArchiveState(status="loading" if settings.archive.enabled else "disabled",
                           metrics=metrics)
    evaluations = EvaluationJobs(settings.finetune, scheduler, settings.model.path,
                                 settings.model.n_threads, registered=settings.adapters.dir)
    services = Services(settings=settings, model=ModelState(), archive=archive,
                        scheduler=scheduler, streams=OpenStreams(), metrics=metrics,
                        evaluations=evaluations)
    metrics.track_queue(lambda: scheduler.running, lambda: scheduler.waiting)
    metrics.track_prefix_cache(services.prefix_cache_stats)
    if generator is not None:
        attach_generator(services, generator, owned=False)
    return services


def build_runner(settings: Settings, generator: TextGenerator, scheduler: Scheduler,
                 metrics: Metrics, *,
                 archive: Callable[[], Archive | None] | None = None,
                 require_archive: Callable[[], Archive] | None = None) -> AgentRunner:
    """The agent runner on a ready generator, as the service builds it: the runner's part of
    ``settings`` (:meth:`RunnerSettings.of`), distillation over a summary cache for this
    model, and, with ``archive`` (returns the request's archive, or ``None`` when not ready),
    retrieved passages in each request's context; with ``require_archive`` (returns the
    request's archive or raises ``ArchiveUnavailable``), the archivist's retrieval.

    A request's ``model`` picks ``base`` or a LoRA adapter of the registry in
    ``ADAPTERS_DIR`` (when the generator serves adapters).

    Opens the summary cache (:func:`open_summary_cache`), the generation store (with
    ``GENERATIONS_ENABLED``: :func:`open_recorder`) and the runner's assembly threads;
    :func:`close_runner` releases them.

    Raises:
        ModelUnavailable: ``SUMMARY_CACHE_DIR`` or ``GENERATIONS_DB_PATH`` cannot be created
            or opened.
    """
    cache = open_summary_cache(settings, generator.model_name, metrics)
    try:
        recorder = (open_recorder(settings, generator, metrics)
                    if settings.generations.enabled else None)
    except BaseException:
        cache.close()
        raise
    return AgentRunner(RunnerSettings.of(settings), generator, scheduler, metrics,
                       extra_elements=(archive_context(archive, settings.voice.exemplars)
                                       if archive is not None else None),
                       retrieve=(archive_search(require_archive) if require_archive is not None
                                 else None),
                       summary_cache=cache, recorder=recorder,
                       adapters=AdapterRegistry(settings.adapters.dir))


def open_recorder(settings: Settings, generator: TextGenerator, metrics: Metrics) -> Recorder:
    """The generation records and response cache of ``generator``'s model (its identity:
    name, file SHA-256, runtime) in ``GENERATIONS_DB_PATH``.

    Raises:
        ModelUnavailable: the store cannot be created or opened (the path and the cause are
            logged, not put in the message, which ``/health`` shows).
    """
    try:
        return Recorder.open(settings.generations, ModelIdentity.of(generator), metrics)
    except GenerationStoreUnavailable as error:
        raise ModelUnavailable(error.message) from error


def open_summary_cache(settings: Settings, model: str, metrics: Metrics) -> SummaryCache:
    """The summary cache of ``model``: a ``diskcache`` in ``SUMMARY_CACHE_DIR`` (created if
    missing, at most ``SUMMARY_CACHE_MAX_BYTES``), its failures counted in ``metrics``; a
    corrupt database in it is moved aside and made anew.

    Raises:
        ModelUnavailable: the directory cannot be created or the database made in it (the
            path and the cause are logged, not put in the message, which ``/health`` shows).
    """
    distillation = settings.distillation
    try:
        return SummaryCache(distillation.cache_dir, distillation.cache_max_bytes, model,
                            on_error=metrics.count_summary_cache_error)
    except (OSError, sqlite3.Error, diskcache.Timeout) as error:
        logger.error("the summary cache could not be opened in %s (%s: %s)",
                     distillation.cache_dir, type(error).__name__, error)
        raise ModelUnavailable(
            "The summary cache could not be opened: make SUMMARY_CACHE_DIR a writable "
            "directory (see the server log).") from error


def close_runner(runner: AgentRunner) -> None:
    """Stop the runner's assembly threads (without waiting for queued work) and close its
    summary cache and generation store. Leaves the generator open."""
    runner.close()
    if runner.distiller is not None:
        runner.distiller.cache.close()
    if runner.recorder is not None:
        runner.recorder.close()


def attach_generator(services: Services, generator: TextGenerator, *, owned: bool) -> None:
    """Build the runner on ``generator`` (:func:`build_runner`, with the services' scheduler,
    metrics and the current tenant's archive) and publish both: the model is ``ready``.

    ``owned``: the services opened the generator, so :func:`close_services` closes it.

    Raises:
        ModelUnavailable: the summary cache cannot be opened.
    """
    runner = build_runner(services.settings, generator, services.scheduler, services.metrics,
                          archive=services.tenant_archive,
                          require_archive=services.require_archive)
    services.set_ready(generator, runner, owned=owned)


async def open_model(services: Services, *, lazy: bool = False) -> None:
    """One attempt at bringing the model up: :func:`open_generator` (in a worker thread),
    then :func:`attach_generator` with the generator marked as the services' own.

    Raises:
        ModelUnavailable: as :func:`open_generator`, or the summary cache cannot be opened
            (the generator is closed first).
    """
    generator = await asyncio.to_thread(open_generator, services.settings, lazy=lazy)
    try:
        attach_generator(services, generator, owned=True)
    except BaseException:
        await _aclose(generator)
        raise


async def _aclose(generator: TextGenerator | None) -> None:
    """The generator's ``aclose``, when it has one; a failure is logged."""
    aclose = getattr(generator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing the model failed")


async def close_services(services: Services) -> None:
    """Release what startup opened, in this order: the runner's assembly threads and its
    summary cache (:func:`close_runner`); the generator, when the services opened it
    (``services.model.owned``; an injected one is left open): its ``aclose`` finishes the
    model thread and the prefix cache's disk writes, or closes the HTTP clients; the archive
    loaded at startup (its Chroma clients, :meth:`app.archive.service.Archive.close`); the
    feedback database, when a request opened it.

    The metrics (an in-memory registry), the scheduler and the open-streams count hold
    nothing to release. Running evaluation jobs are cancelled first (each records itself as
    interrupted and closes its models). Call it once, after serving. Never raises: a failing
    step is logged and the others still run.
    """
    try:
        await services.evaluations.aclose()
    except Exception:
        logger.exception("stopping the evaluation jobs failed")
    runner = services.runner
    if runner is not None:
        try:
            close_runner(runner)
        except Exception:
            logger.exception("closing the runner failed")
    if services.model.owned:
        await _aclose(services.model.generator)
    archive = services.archive.archive
    if archive is not None:
        try:
            await asyncio.to_thread(archive.close)
        except Exception:
            logger.exception("closing the archive failed")
    if services.feedback is not None:
        try:
            services.feedback.close()
        except Exception:
            logger.exception("closing the feedback database failed")


@asynccontextmanager
async def services_for_cli(settings: Settings) -> AsyncIterator[Services]:
    """The services a model command of the command line runs on, closed on exit.

    Builds them (:func:`build_services`), loads the archive when ``ARCHIVE_ENABLED`` (a
    failure is left on ``services.archive``: the runner goes on without passages), opens the
    model once without retrying (:func:`open_generator` with ``lazy=True``: weights on the
    first generation) and attaches it (:func:`open_model`); on exit, whatever happened,
    :func:`close_services` closes all of it, the model included.

    Raises:
        ModelUnavailable: the model cannot be opened (what was opened is closed first).
    """
    services = build_services(settings)
    try:
        await load_archive(services.archive, settings.archive)
        await open_model(services, lazy=True)
        yield services
    finally:
        await close_services(services)
