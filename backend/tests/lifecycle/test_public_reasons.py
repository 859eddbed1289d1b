"""What ``/health`` and ``/ready`` (open to anyone, no key) say when the model or the embedding
model fails to load: a reason that names the setting to check, never a path, the model
server's address or answer, or a library's error text (those go to the server log)."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.remote.conftest import remote_settings
from tests.remote.servers import free_port, serve

#: Library and exception text that must not reach a client.
LIBRARY_TEXT = ("Failed to load", "llama", "Traceback", "Error:", "ValueError", "OSError",
                "ConnectError", "JSONDecodeError", "Expecting value", "http://", "127.0.0.1")


def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def probes_after_model_error(client: TestClient) -> tuple[str, str, str]:
    """(the /health reason, the /health body, the /ready body) once the model failed."""
    assert wait_for(lambda: client.get("/health").json()["model_status"] == "error")
    health = client.get("/health")
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "model_error" in ready.json()["error"]["details"]["reasons"]
    return health.json()["error"], health.text, ready.text


def assert_nothing_leaks(text: str, *private: str) -> None:
    for secret in (*private, *LIBRARY_TEXT):
        assert secret not in text, f"{secret!r} in {text}"


def test_a_truncated_gguf_is_reported_without_its_path_or_llama_cpps_text(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A GGUF header (magic, version 3, 3 tensors, 5 metadata pairs) and nothing after it:
    # our magic check passes, llama.cpp refuses it (no model is loaded).
    path = tmp_path / "private-models" / "story-model.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 3, 5) + bytes(8))
    app = create_app(settings.replace(model_path=path, model_load_retry_s=60))
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        reason, health, ready = probes_after_model_error(client)
    assert "MODEL_PATH" in reason and "server log" in reason
    for text in (health, ready):
        assert_nothing_leaks(text, str(tmp_path), "private-models", "story-model")
    assert str(path) in caplog.text  # the detail is in the log


def test_an_unreachable_model_server_is_reported_without_its_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = remote_settings(f"http://127.0.0.1:{port}/v1", tmp_path, llm_connect_retry_s=60)
    with TestClient(create_app(settings)) as client:
        reason, health, ready = probes_after_model_error(client)
    assert "unreachable" in reason and "LLM_BASE_URL" in reason
    for text in (health, ready):
        assert_nothing_leaks(text, str(port))


def test_a_failing_model_server_is_reported_without_its_answer(tmp_path: Path) -> None:
    async def models(_request: object) -> JSONResponse:
        return JSONResponse({"error": {"message": "database at /srv/llm/secret.db is locked"}},
                            status_code=500)

    with serve(Starlette(routes=[Route("/v1/models", models)])) as upstream:
        port = upstream.rsplit(":", 1)[1]
        settings = remote_settings(f"{upstream}/v1", tmp_path, model_load_retry_s=60)
        with TestClient(create_app(settings)) as client:
            reason, health, ready = probes_after_model_error(client)
    assert "500" in reason and "server log" in reason
    for text in (health, ready):
        assert_nothing_leaks(text, port, "/srv/llm", "secret.db", "locked")


def test_an_embedding_model_that_fails_is_reported_without_its_path_or_library_text(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "private-embedder"
    model.mkdir()
    (model / "modules.json").write_text("{ this is not JSON")  # a broken model directory
    app = create_app(settings.replace(archive_enabled=True, embedding_model=str(model)),
                     generator=FakeGenerator())
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        assert wait_for(lambda: client.get("/ready").json().get("error", {}).get(
            "details", {}).get("reasons") == ["archive_error"], seconds=120)
        ready = client.get("/ready")
    assert "EMBEDDING_MODEL" in ready.json()["error"]["message"]
    assert_nothing_leaks(ready.text, str(tmp_path), "private-embedder")
    assert "private-embedder" in caplog.text  # the detail is in the log
