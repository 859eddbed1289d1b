"""The services of one running app, kept in one typed object on ``app.state.services``."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from app.agents.runner import AgentRunner
from app.api.sse import OpenStreams
from app.archive.service import Archive, ArchiveState
from app.config import Settings
from app.errors import ModelUnavailable
from app.finetune.jobs import EvaluationJobs
from app.llm.prefix_cache import CacheStats, PrefixCache
from app.llm.protocol import TextGenerator
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.tenancy import current_tenant
from app.voice.feedback import FeedbackStore
from app.voice.service import VoiceProfiles

ModelStatus = Literal["loading", "ready", "error"]


@dataclass
class ModelState:
    """Where the model load stands; ``error`` holds the reason when it failed. ``owned``: the
    services opened ``generator`` (and close it); an injected one (tests) is not theirs."""

    status: ModelStatus = "loading"
    error: str | None = None
    generator: TextGenerator | None = None
    owned: bool = False


@dataclass
class Services:
    """Everything the routes need. Only holds them: :func:`app.bootstrap.build_services`
    creates every collaborator, :func:`app.bootstrap.attach_generator` publishes the model and
    the runner, :func:`app.bootstrap.close_services` releases them."""

    settings: Settings
    model: ModelState
    archive: ArchiveState
    scheduler: Scheduler
    streams: OpenStreams
    metrics: Metrics
    evaluations: EvaluationJobs
    runner: AgentRunner | None = None
    feedback: FeedbackStore | None = None
    voices: VoiceProfiles = field(default_factory=VoiceProfiles)
    #: Set once the runner is published (:meth:`set_ready`).
    runner_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _feedback_lock: threading.Lock = field(default_factory=threading.Lock)

    def set_ready(self, generator: TextGenerator, runner: AgentRunner, *, owned: bool) -> None:
        """Publish a loaded generator and the runner built on it; ``owned`` as in
        :class:`ModelState`."""
        self.model = ModelState(status="ready", generator=generator, owned=owned)
        self.runner = runner
        self.runner_ready.set()

    def prefix_cache_stats(self) -> CacheStats | None:
        """The in-process model's prefix cache figures (``None`` without one)."""
        cache = getattr(self.model.generator, "prefix_cache", None)
        return cache.stats if isinstance(cache, PrefixCache) else None

    def tenant_archive(self) -> Archive | None:
        """The current request's tenant's archive when the archive is ready, else ``None``."""
        archive = self.archive.ready()
        return archive.for_tenant(current_tenant.get()) if archive is not None else None

    def require_archive(self) -> Archive:
        """The current request's tenant's story archive, once loaded.

        Raises:
            ArchiveUnavailable: disabled, loading or failed to load (HTTP 503).
        """
        return self.archive.require().for_tenant(current_tenant.get())

    def require_runner(self) -> AgentRunner:
        """The agent runner, once the model is ready.

        Raises:
            ModelUnavailable: the model is loading or failed to load (HTTP 503).
        """
        if self.runner is not None:
            return self.runner
        if self.model.status == "error":
            raise ModelUnavailable(f"The model failed to load: {self.model.error}")
        raise ModelUnavailable("The model is still loading; retry in a few seconds.")


    def require_feedback(self) -> FeedbackStore:
        """The feedback database, opened on first use (``FEEDBACK_DB_PATH``).

        Raises:
            FeedbackUnavailable: it cannot be opened (HTTP 503; the cause is logged).
        """
        with self._feedback_lock:
            if self.feedback is None:
                self.feedback = FeedbackStore.open(self.settings.voice.feedback_db_path)
            return self.feedback


def get_services(request: Request) -> Services:
    """FastAPI dependency: the app's services."""
    return request.app.state.services
