"""Every input limit, tested at the limit and one past it; per-user rate limits."""

import asyncio
import logging
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import DEVNULL, Popen

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api import middleware
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.schemas.context import MAX_CHAPTERS, MAX_ELEMENT_CHARS, MAX_ELEMENTS
from app.schemas.requests import MAX_CHAT_MESSAGES
from tests.conftest import free_port, seed_example, serve


def status(client, path, body):
    return client.post(f"/api/v1/{path}", json=body).status_code


def test_text_length_limit(client):
    assert status(client, "tokens/count", {"text": "a" * MAX_ELEMENT_CHARS}) == 200
    response = client.post("/api/v1/tokens/count", json={"text": "a" * (MAX_ELEMENT_CHARS + 1)})
    assert response.status_code == 422 and response.json()["error"]["param"] == "text"


def test_number_of_elements_limit(client):
    body = seed_example()
    body["structured_context"]["plot_elements"] = [
        {"type": "world", "content": f"fact {i}"} for i in range(MAX_ELEMENTS)]
    assert status(client, "context/preview", {"operation": "generate-chapter",
                                              "request": body}) == 200
    body["structured_context"]["plot_elements"].append({"type": "world", "content": "one more"})
    assert status(client, "context/preview", {"operation": "generate-chapter",
                                              "request": body}) == 422


def test_number_of_chapters_limit(client):
    body = seed_example()
    body["structured_context"]["chapters"] = [
        {"number": n, "content": "x."} for n in range(1, MAX_CHAPTERS + 1)]
    assert status(client, "context/preview", {"operation": "generate-chapter",
                                              "request": body}) == 200
    body["structured_context"]["chapters"].append({"number": MAX_CHAPTERS + 1, "content": "y."})
    assert status(client, "context/preview", {"operation": "generate-chapter",
                                              "request": body}) == 422


def test_number_of_chat_messages_limit(client):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"}
             for i in range(MAX_CHAT_MESSAGES - 1)] + [{"role": "user", "content": "hi"}]
    assert len(turns) == MAX_CHAT_MESSAGES
    assert status(client, "llm-chat", {"messages": turns, "max_tokens": 4}) == 200
    assert status(client, "llm-chat", {"messages": [*turns, {"role": "user", "content": "x"}]}) \
        == 422


@pytest.mark.parametrize(("operation", "fields", "limit"), [
    ("generate-chapter", {}, 4096),
    ("editor-review", {"chapter_to_review": "Text."}, 2048),
    ("regenerate-bio", {"character_name": "Aria"}, 1024),
])
def test_max_tokens_per_agent(client, operation, fields, limit):
    body = {**seed_example(), **fields}
    at_limit = client.post("/api/v1/context/preview", json={
        "operation": operation, "request": {**body, "max_tokens": limit}})
    assert at_limit.status_code == 200
    past = client.post(f"/api/v1/{operation}", json={**body, "max_tokens": limit + 1})
    assert past.status_code == 422 and past.json()["error"]["param"] == "max_tokens"
    assert str(limit) in past.json()["error"]["message"]


def test_request_body_size_limit(settings):
    limit = 64 * 1024
    app = create_app(settings.replace(max_request_bytes=limit),
                     generator=FakeGenerator())
    body = b'{"text": "' + b"a" * (limit - 12) + b'"}'
    assert len(body) == limit
    with TestClient(app) as client:
        ok = client.post("/api/v1/tokens/count", content=body,
                         headers={"content-type": "application/json"})
        assert ok.status_code == 200
        big = body[:-2] + b'a"}'
        refused = client.post("/api/v1/tokens/count", content=big,
                              headers={"content-type": "application/json"})
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: counted as it streams
            yield big[: limit // 2]
            yield big[limit // 2:]
        streamed = client.post("/api/v1/tokens/count", content=chunks(),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_requests_per_minute_limit(settings):
    app = create_app(settings.replace(rate_limit_per_minute=3),
                     generator=FakeGenerator())
    with TestClient(app) as client:
        codes = [status(client, "tokens/count", {"text": "x"}) for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = client.post("/api/v1/tokens/count", json={"text": "x"})
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert client.get("/health").status_code == 200  # probes are never limited


async def test_concurrent_requests_limit(settings):
    generator = FakeGenerator(replies=[" ".join(["w"] * 200)], token_delay_s=0.02)
    app = create_app(settings.replace(rate_limit_concurrent=1),
                     generator=generator)
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            first = asyncio.create_task(client.post("/api/v1/generate-chapter/stream",
                                                    json={**seed_example(), "max_tokens": 40}))
            await asyncio.sleep(0.3)
            second = await client.post("/api/v1/tokens/count", json={"text": "x"})
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            assert (await first).status_code == 200
            # the slot frees when the server has finished the response, a moment after the
            # client read its last byte
            for _ in range(20):
                again = await client.post("/api/v1/tokens/count", json={"text": "x"})
                if again.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert again.status_code == 200


# --- per-minute limits shared by replicas: RATE_LIMIT_STORAGE_URI on a real redis-server ------

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (`make redis` installs it as "
    "root: apt-get install redis-server)")
ALICE = "alice-key-0123456789"
BOB = "bob-key-abcdefghijkl"


def _redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(command + b"\r\n")
        return connection.recv(64)


@contextmanager
def redis_server(directory: Path, port: int | None = None) -> Iterator[tuple[str, Popen]]:
    """A redis-server on loopback (no persistence, its files in ``directory``); yields its
    URI and process once it answers PING."""
    port = port or free_port()
    process = Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(directory)],
                    stdout=DEVNULL, stderr=DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if _redis_command(port, b"PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case a test left it stopped
            process.terminate()
            process.wait(10)


def _replica(settings, uri, per_minute):
    return create_app(settings.replace(api_keys=SecretStr(f"alice:{ALICE},bob:{BOB}"),
                                       rate_limit_per_minute=per_minute,
                                       rate_limit_storage_uri=uri),
                      generator=FakeGenerator())


def _count(client, key):
    return client.post("/api/v1/tokens/count", json={"text": "x"},
                       headers={"X-API-Key": key}).status_code


@needs_redis
def test_replicas_on_one_redis_share_a_users_budget(settings, tmp_path):
    with redis_server(tmp_path) as (uri, _), \
            TestClient(_replica(settings, uri, 3)) as one, \
            TestClient(_replica(settings, uri, 3)) as two:
        assert [_count(one, ALICE), _count(two, ALICE), _count(one, ALICE)] == [200, 200, 200]
        assert _count(two, ALICE) == 429 and _count(one, ALICE) == 429
        refused = two.post("/api/v1/tokens/count", json={"text": "x"},
                           headers={"X-API-Key": ALICE})
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert _count(two, BOB) == 200  # per user


def test_without_a_shared_storage_each_replica_counts_alone(settings):
    """The default, memory://: what the shared storage changes."""
    with TestClient(_replica(settings, "memory://", 2)) as one, \
            TestClient(_replica(settings, "memory://", 2)) as two:
        assert [_count(one, ALICE) for _ in range(3)] == [200, 200, 429]
        assert _count(two, ALICE) == 200


@needs_redis
def test_guesses_count_across_replicas(settings, tmp_path):
    guess = {"X-API-Key": "guess-guess-guess-guess"}
    with redis_server(tmp_path) as (uri, _):
        apps = [create_app(settings.replace(api_keys=SecretStr(f"alice:{ALICE}"),
                                            rate_limit_auth_failures_per_minute=2,
                                            rate_limit_storage_uri=uri),
                           generator=FakeGenerator()) for _ in range(2)]
        with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
            codes = [client.get("/metrics", headers=guess).status_code
                     for client in (one, two, one)]
            assert codes == [401, 401, 429]


@needs_redis
def test_a_redis_that_fails_mid_run_lets_requests_through_and_says_so(
        settings, tmp_path, caplog, monkeypatch):
    """Fail open: while the storage cannot be reached (hung, then down) requests are served
    without per-minute limits, a warning is logged once and each skipped check is counted;
    once it answers again the limits are back."""
    monkeypatch.setattr(middleware, "STORAGE_RECHECK_S", 0.3)
    monkeypatch.setattr(middleware, "STORAGE_TIMEOUT_S", 0.5)
    caplog.set_level(logging.WARNING, logger="app.api.middleware")
    port = free_port()
    app = _replica(settings, f"redis://127.0.0.1:{port}/0", 2)
    with TestClient(app) as client:
        with redis_server(tmp_path, port) as (_, process):
            assert [_count(client, ALICE) for _ in range(3)] == [200, 200, 429]
            process.send_signal(signal.SIGSTOP)  # hung: a call waits for the timeout
            started = time.monotonic()
            assert _count(client, ALICE) == 200
            assert _count(client, ALICE) == 200  # within the recheck pause: not asked at all
            assert time.monotonic() - started < 3
        time.sleep(0.4)  # down now: refused connections
        assert [_count(client, ALICE) for _ in range(3)] == [200, 200, 200]
        failed = [r for r in caplog.records if "rate-limit storage failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING
        skipped = app.state.services.metrics.registry.get_sample_value(
            "writer_assistant_rate_limit_checks_skipped_total")
        assert skipped == 5
        with redis_server(tmp_path, port):  # back, and empty
            time.sleep(0.4)
            assert [_count(client, ALICE) for _ in range(3)] == [200, 200, 429]
        assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("uri", ["http://user:hunter2-secret@cache:6379",
                                 "redis-without-a-scheme", "memcached://cache:11211",
                                 "redis+cluster://cache:7000"])
def test_a_bad_storage_uri_is_refused_by_name_without_quoting_it(settings, uri):
    with pytest.raises(ValueError) as refused:
        settings.replace(rate_limit_storage_uri=uri)
    assert "RATE_LIMIT_STORAGE_URI" in str(refused.value)
    assert "hunter2" not in str(refused.value) and "cache" not in str(refused.value)
