"""Readiness, SIGTERM drain and recovery from a missing model."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.lifespan import drain
from app.llm.fake import FakeGenerator
from app.llm.llama import default_model_path
from app.main import create_app
from tests.conftest import _free_port, seed_example, serve


def test_ready_when_the_model_is_loaded(client):
    assert client.get("/ready").json() == {"status": "ready"}


def test_not_ready_while_loading_with_a_reason_code(settings):
    client = TestClient(create_app(settings))  # lifespan not run: the model stays "loading"
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["details"]["reasons"] == ["model_loading"]
    assert client.get("/health").status_code == 200  # liveness does not depend on the model


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.model
def test_missing_model_is_reported_and_recovers_when_the_file_appears(settings, tmp_path):
    path = tmp_path / "models" / "model.gguf"
    app = create_app(settings.replace(model_path=path, model_load_retry_s=0.2))
    with TestClient(app) as client:
        assert wait_for(lambda: client.get("/health").json()["model_status"] == "error")
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["reasons"] == ["model_error"]
        assert "not found" in client.get("/health").json()["error"]
        assert str(tmp_path) not in ready.text  # no paths leak to clients
        assert client.post("/api/v1/generate-chapter", json=seed_example()).status_code == 503
        path.parent.mkdir()
        shutil.copy(default_model_path(), path)
        assert wait_for(lambda: client.get("/ready").status_code == 200)
        response = client.post("/api/v1/generate-chapter", json={**seed_example(),
                                                                 "max_tokens": 8})
        assert response.status_code == 200


async def test_drain_refuses_new_work_and_ends_streams_past_the_grace_period(settings):
    generator = FakeGenerator(replies=[" ".join(["word"] * 500)], token_delay_s=0.02)
    app = create_app(settings.replace(drain_grace_s=0.3), generator=generator)
    services = app.state.services
    exited = []
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            stream = asyncio.create_task(client.post("/api/v1/generate-chapter/stream",
                                                     json={**seed_example(), "max_tokens": 400}))
            await asyncio.sleep(0.3)
            draining = asyncio.create_task(drain(services, lambda: exited.append(True)))
            await asyncio.sleep(0.05)
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"]["reasons"] == ["draining"]
            refused = await client.post("/api/v1/generate-chapter", json=seed_example())
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "service_draining"
            await draining
            assert exited == [True]
            lines = (await stream).text.splitlines()
            names = [line for line in lines if line.startswith("event:")]
            assert names[-1] == "event: error" and "event: done" not in names
            data = json.loads([line for line in lines if line.startswith("data:")][-1][5:])
            assert data["code"] == "service_draining"


@pytest.mark.model
def test_sigterm_lets_a_running_stream_finish_and_exits_zero(tmp_path):
    port = _free_port()
    env = {**os.environ, "ARCHIVE_ENABLED": "false", "DRAIN_GRACE_S": "120",
           "SUMMARY_CACHE_DIR": str(tmp_path / "summaries")}
    command = [str(Path(sys.executable).parent / "writer-assistant"), "serve", "--port",
               str(port)]
    process = subprocess.Popen(command, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _ready(base), 120)
        events = []
        with httpx.Client(base_url=base, timeout=60) as client:
            body = {**seed_example(), "max_tokens": 60, "temperature": 0.0}
            with client.stream("POST", "/api/v1/generate-chapter/stream", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith(("event:", "data: {\"code")):
                        events.append(line)
                    if line == "event: token" and events.count("event: token") == 1:
                        process.send_signal(signal.SIGTERM)
                        ready = httpx.get(f"{base}/ready", timeout=5)
                        assert ready.status_code == 503
                        assert "draining" in ready.json()["error"]["details"]["reasons"]
                        late = httpx.post(f"{base}/api/v1/generate-chapter", json=seed_example(),
                                          timeout=5)
                        assert late.status_code == 503
        assert events[-1] == "event: done", events[-3:]
        assert process.wait(timeout=150) == 0
    finally:
        if process.poll() is None:
            process.kill()


def _ready(base):
    try:
        return httpx.get(f"{base}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
