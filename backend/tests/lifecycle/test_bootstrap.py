"""What startup opens, shutdown closes: the runner's threads, the summary cache, the model when
the services opened it (never one a test injected) and the archive's Chroma clients."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from app import bootstrap
from app.archive.service import Archive
from app.archive.store import ChromaStore
from app.config import Settings
from app.context.summaries import SummaryCache
from app.errors import ModelUnavailable
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.observability.metrics import Metrics
from tests.conftest import seed_example


@dataclass
class ClosingFake(FakeGenerator):
    """A fake model that counts its ``aclose`` calls (and fails them when ``fail_close``)."""

    closed: int = 0
    fail_close: bool = False

    async def aclose(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("close failed")


@pytest.fixture
def closed_caches(monkeypatch: pytest.MonkeyPatch) -> list[SummaryCache]:
    """The summary caches closed during the test, in order."""
    closed: list[SummaryCache] = []
    close = SummaryCache.close

    def spy(self: SummaryCache) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(SummaryCache, "close", spy)
    return closed


def is_shut_down(executor: Executor) -> bool:
    try:
        executor.submit(int).result()
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        return True
    return False


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_build_services_creates_every_collaborator(settings):
    services = bootstrap.build_services(settings)
    assert services.model.status == "loading" and services.runner is None
    assert services.archive.status == "disabled"  # ARCHIVE_ENABLED is off in these settings
    assert services.archive.metrics is services.metrics
    assert services.scheduler.waiting == 0 and services.streams.count == 0
    other = bootstrap.build_services(settings)
    assert other.metrics is not services.metrics and other.scheduler is not services.scheduler
    assert other.streams is not services.streams and other.archive is not services.archive
    limit = settings.limits.queue_max_waiting
    tight = bootstrap.build_services(settings.replace(queue_max_waiting=limit + 1))
    assert tight.scheduler.max_waiting == limit + 1
    assert bootstrap.build_services(settings.replace(archive_enabled=True)).archive.status \
        == "loading"


def test_an_injected_generator_is_used_and_left_open(settings, closed_caches):
    generator = ClosingFake(replies=["The forest was quiet."])
    app = create_app(settings, generator=generator)
    services = app.state.services
    runner = services.runner
    assert services.model.status == "ready" and not services.model.owned
    assert runner.generator is generator
    with TestClient(app) as client:
        assert client.post("/api/v1/generate-chapter", json=seed_example()).status_code == 200
        assert not is_shut_down(runner.executor)
    assert is_shut_down(runner.executor)
    assert closed_caches == [runner.distiller.cache]
    assert generator.closed == 0  # the test's, not the app's


def test_a_generator_the_app_opened_is_closed(settings, closed_caches, monkeypatch):
    generator = ClosingFake(replies=["The forest was quiet."])
    opened: list[dict] = []

    def open_generator(_settings: Settings, **options: object) -> ClosingFake:
        opened.append(options)
        return generator

    monkeypatch.setattr(bootstrap, "open_generator", open_generator)
    app = create_app(settings)
    services = app.state.services
    with TestClient(app) as client:
        assert wait_for(lambda: client.get("/ready").status_code == 200)
        runner = services.runner
        assert services.model.owned and runner.generator is generator
        assert client.post("/api/v1/generate-chapter", json=seed_example()).status_code == 200
    assert opened == [{"lazy": False}]  # the server loads the weights at startup
    assert is_shut_down(runner.executor)
    assert closed_caches == [runner.distiller.cache]
    assert generator.closed == 1


async def test_close_services_goes_on_past_a_failure(settings, closed_caches, caplog):
    services = bootstrap.build_services(settings)
    generator = ClosingFake(fail_close=True)
    bootstrap.attach_generator(services, generator, owned=True)
    archive = SimpleNamespace(closed=0)
    archive.close = lambda: setattr(archive, "closed", archive.closed + 1)
    services.archive.archive = archive
    with caplog.at_level(logging.ERROR, logger="app.bootstrap"):
        await bootstrap.close_services(services)
    assert generator.closed == 1 and "closing the model failed" in caplog.text
    assert is_shut_down(services.runner.executor)
    assert closed_caches == [services.runner.distiller.cache]
    assert archive.closed == 1


async def test_open_model_closes_the_generator_when_the_runner_cannot_be_built(
        settings, monkeypatch, tmp_path):
    generator = ClosingFake()
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: generator)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    services = bootstrap.build_services(settings.replace(summary_cache_dir=blocker / "cache"))
    with pytest.raises(ModelUnavailable, match="SUMMARY_CACHE_DIR"):
        await bootstrap.open_model(services)
    assert generator.closed == 1
    assert services.model.status == "loading" and services.runner is None


async def test_services_for_cli_open_the_model_lazily_and_close_everything(
        settings, closed_caches, monkeypatch):
    generator = ClosingFake()
    opened: list[dict] = []

    def open_generator(_settings: Settings, **options: object) -> ClosingFake:
        opened.append(options)
        return generator

    monkeypatch.setattr(bootstrap, "open_generator", open_generator)
    with pytest.raises(ValueError, match="the command failed"):
        async with bootstrap.services_for_cli(settings) as services:
            runner = services.require_runner()
            assert services.model.owned and runner.generator is generator
            raise ValueError("the command failed")
    assert opened == [{"lazy": True}]
    assert is_shut_down(runner.executor)
    assert closed_caches == [runner.distiller.cache]
    assert generator.closed == 1


class _Embedder:
    name, dimension, max_tokens = "stub-embedder", 3, 128


def test_archive_close_drops_the_chroma_clients_of_every_tenant(tmp_path: Path):
    settings = Settings(archive_db_path=tmp_path / "archive").archive
    archive = Archive(settings, _Embedder(), ChromaStore(settings, "stub-embedder", 3), Metrics())
    tenant = archive.for_tenant("acme")
    assert archive.store.count() == 0 and tenant.store.count() == 0  # both connected
    archive.close()
    assert archive.store._client is None and tenant.store._client is None
    assert archive.store.count() == 0  # a later call connects again
    archive.close()
    archive.close()  # closing a closed store is a no-op


def test_an_unusable_summary_cache_dir_fails_the_model_with_a_reason_to_act_on(
        settings, monkeypatch):
    """SUMMARY_CACHE_DIR that cannot be created: the model ends "error" (never "loading"), the
    reason names the setting and no path, and the generator opened for it is closed."""
    generator = ClosingFake()
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: generator)
    app = create_app(settings.replace(summary_cache_dir=Path("/proc/x/c"), model_load_retry_s=60))
    with TestClient(app) as client:
        assert wait_for(lambda: client.get("/health").json()["model_status"] == "error")
        health, ready = client.get("/health"), client.get("/ready")
    reason = health.json()["error"]
    assert "SUMMARY_CACHE_DIR" in reason and "writable" in reason
    assert "loading the model" not in reason  # the model loaded; its services did not
    assert ready.status_code == 503
    assert ready.json()["error"]["details"]["reasons"] == ["model_error"]
    for text in (health.text, ready.text):
        assert "/proc" not in text and "FileNotFoundError" not in text
    assert generator.closed == 1


def test_a_failure_outside_the_retry_policy_still_ends_in_the_failed_state(settings, monkeypatch):
    """Whatever ends the load (here an exception the startup policy does not retry), the
    model never stays "loading": /health says it failed and why to look in the log."""
    class Fatal(BaseException):
        pass

    def open_generator(_settings: Settings, **_options: object) -> FakeGenerator:
        raise Fatal("/secret/place")

    monkeypatch.setattr(bootstrap, "open_generator", open_generator)
    with TestClient(create_app(settings)) as client:
        assert wait_for(lambda: client.get("/health").json()["model_status"] == "error")
        health = client.get("/health").json()
        assert client.post("/api/v1/generate-chapter", json=seed_example()).status_code == 503
    assert "server log" in health["error"] and "/secret" not in health["error"]
