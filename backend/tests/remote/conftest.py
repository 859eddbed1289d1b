"""Fixtures for the remote backend: a real llama-cpp-python server on the embedded GGUF, our app
pointed at it (``LLM_BACKEND=openai``), and a scripted fake upstream.

``http`` is overridden here, so the end-to-end suite of ``tests/e2e`` imported into this package
runs against the app on the remote backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.remote.servers import Upstream, fake_upstream, llama_cpp_server, serve, wait_for_model


def remote_settings(base_url: str, state: Path, **overrides) -> Settings:
    """Settings of an app on the remote backend at ``base_url`` (archive off, state in
    ``state``; answers judged but not retried, since scripted upstream replies are short and
    these tests count upstream calls)."""
    return Settings(**{"llm_backend": "openai", "llm_base_url": base_url,
                       "archive_enabled": False, "summary_cache_dir": state / "summaries",
                       "archive_db_path": state / "archive", "quality_max_retries": 0,
                       **overrides})


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m llama_cpp.server`` on loopback; yields its ``.../v1`` base URL."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp_server(log) as base:
        yield base


@pytest.fixture(scope="session")
def remote_live_server(llama_server: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our app under uvicorn, generating through the llama-cpp-python server."""
    settings = remote_settings(llama_server, tmp_path_factory.mktemp("remote-live"))
    with serve(create_app(settings)) as base:
        health = wait_for_model(base)
        assert health.get("model_status") == "ready", health
        yield base


@pytest.fixture(scope="session")
def http(remote_live_server: str) -> Iterator[httpx.Client]:
    """Overrides ``tests/conftest.py``'s: the e2e suite talks to the app on the remote backend."""
    with httpx.Client(base_url=remote_live_server, timeout=300) as session:
        yield session


@pytest.fixture(scope="session")
def upstream_state() -> Upstream:
    return Upstream()


@pytest.fixture(scope="session")
def upstream(upstream_state: Upstream) -> Iterator[str]:
    """The scripted fake upstream; yields its root URL (no ``/v1``)."""
    with serve(fake_upstream(upstream_state)) as base:
        yield base


@pytest.fixture
def script(upstream_state: Upstream) -> Iterator[Upstream]:
    """The fake upstream's script, reset to defaults after each test."""
    yield upstream_state
    fresh = Upstream()
    for name in ("mode", "pieces", "retry_after", "tokenize_offset", "dialect", "n_ctx",
                 "fail_first", "fail_tokenize", "message"):
        setattr(upstream_state, name, getattr(fresh, name))
    upstream_state.requests.clear()
    upstream_state.authorization.clear()


@pytest.fixture(scope="session")
def fake_app(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our app under uvicorn on the fake upstream; yields its base URL."""
    settings = remote_settings(f"{upstream}/v1", tmp_path_factory.mktemp("fake-app"))
    with serve(create_app(settings)) as base:
        health = wait_for_model(base, timeout=30)
        assert health.get("model_status") == "ready", health
        yield base
