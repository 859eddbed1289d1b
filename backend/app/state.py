"""The services of one running app, kept in one typed object on ``app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from app.agents.runner import AgentRunner, RunnerSettings
from app.api.sse import OpenStreams
from app.archive.retrieval import archive_context, archive_search
from app.archive.service import Archive, ArchiveState
from app.config import Settings
from app.context.summaries import SummaryCache
from app.errors import ModelUnavailable
from app.llm.prefix_cache import CacheStats, PrefixCache
from app.llm.protocol import TextGenerator
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.tenancy import current_tenant

ModelStatus = Literal["loading", "ready", "error"]


@dataclass
class ModelState:
    """Where the model load stands; ``error`` holds the reason when it failed."""

    status: ModelStatus = "loading"
    error: str | None = None
    generator: TextGenerator | None = None


@dataclass
class Services:
    """Everything the routes need, built once at startup."""

    settings: Settings
    model: ModelState = field(default_factory=ModelState)
    runner: AgentRunner | None = None
    archive: ArchiveState = field(default_factory=ArchiveState)
    scheduler: Scheduler = field(init=False)
    streams: OpenStreams = field(default_factory=OpenStreams)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        settings = self.settings
        limits = settings.limits
        self.scheduler = Scheduler(limits.queue_max_waiting, limits.queue_max_wait_s,
                                   limits.promote_after_s)
        self.metrics.track_queue(lambda: self.scheduler.running, lambda: self.scheduler.waiting)
        self.metrics.track_prefix_cache(self._prefix_cache_stats)
        self.archive.metrics = self.metrics
        if not self.settings.archive.enabled:
            self.archive.status = "disabled"

    def set_ready(self, generator: TextGenerator) -> None:
        """Publish a loaded generator and the runner on top of it (with archive retrieval and
        the summary cache)."""
        settings = self.settings
        cache = SummaryCache(settings.distillation.cache_dir,
                             settings.distillation.cache_max_bytes, generator.model_name)
        self.model = ModelState(status="ready", generator=generator)
        self.runner = AgentRunner(RunnerSettings.of(settings), generator, self.scheduler, self.metrics,
                                  extra_elements=archive_context(self.tenant_archive),
                                  retrieve=archive_search(self.require_archive),
                                  summary_cache=cache)

    def _prefix_cache_stats(self) -> CacheStats | None:
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


def get_services(request: Request) -> Services:
    """FastAPI dependency: the app's services."""
    return request.app.state.services
