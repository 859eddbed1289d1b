"""Shared fixtures: a fake-model app for fast tests, a real server on the embedded model."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.remote.servers import free_port, wait_for_model
from tests.remote.servers import serve as serve_asgi

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))

#: The seed example of the issue, verbatim.
SEED_EXAMPLE = {
    "structured_context": {
        "plot_elements": [{"type": "scene", "content": "Hero enters forest", "priority": "high"}],
        "character_contexts": [
            {"character_id": "hero", "character_name": "Aria", "current_state": "determined"}
        ],
        "user_requests": [
            {"type": "instruction", "content": "Add sensory details", "priority": "high"}
        ],
    }
}


def seed_example() -> dict:
    """A fresh copy of the seed example body."""
    return json.loads(json.dumps(SEED_EXAMPLE))


@pytest.fixture(autouse=True)
def _own_generation_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's generation records and response cache in its own file: a cache shared
    between tests would answer one test with another's reply."""
    monkeypatch.setenv("GENERATIONS_DB_PATH", str(tmp_path / "generations.sqlite3"))


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator(replies=["The forest was quiet. Aria listened."])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose on-disk state lives in a temporary directory; no archive (its embedding
    model takes seconds to load; archive tests turn it on), no per-user limits (their own
    tests turn them on), and answers judged but not retried (scripted replies are short; the
    retry tests ask for retries)."""
    return Settings(summary_cache_dir=tmp_path / "summaries",
                    archive_db_path=tmp_path / "archive",
                    feedback_db_path=tmp_path / "feedback.sqlite3",
                    generations_db_path=tmp_path / "generations.sqlite3", archive_enabled=False,
                    adapters_dir=tmp_path / "adapters",
                    rate_limit_per_minute=0, rate_limit_concurrent=0,
                    rate_limit_auth_failures_per_minute=0, quality_max_retries=0)


@pytest.fixture
def client(fake: FakeGenerator, settings: Settings) -> Iterator[TestClient]:
    """An app on the fake generator (no model load)."""
    with TestClient(create_app(settings, generator=fake)) as test_client:
        yield test_client


_free_port = free_port


@contextmanager
def serve(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL once
    ``/health`` reports the model ready."""
    with serve_asgi(app) as base:
        health = wait_for_model(base)
        assert health.get("model_status") == "ready", f"model did not load: {health}"
        yield base


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn server on loopback with the embedded model loaded; yields its base URL.
    One content-check retry (not the default two) keeps the suite's generations bounded."""
    state = tmp_path_factory.mktemp("live")
    settings = Settings(summary_cache_dir=state / "summaries", archive_db_path=state / "archive",
                        feedback_db_path=state / "feedback.sqlite3",
                        generations_db_path=state / "generations.sqlite3",
                        adapters_dir=state / "adapters", quality_max_retries=1)
    with serve(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="session")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=300) as session:
        yield session


@pytest.fixture(scope="session")
def _alice_body() -> dict:
    from alice_context import build_request

    return build_request(chapters=1)


@pytest.fixture
def alice_request(_alice_body: dict) -> dict:
    """The documented Alice example: chapter 1 as the story so far, chapter 2 to write (a
    fresh copy per test, so a test may change it)."""
    return copy.deepcopy(_alice_body)
