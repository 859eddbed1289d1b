"""Every input limit, tested at the limit and one past it; per-user rate limits."""

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from app.llm.fake import FakeGenerator
from app.main import create_app
from app.schemas.context import MAX_CHAPTERS, MAX_ELEMENT_CHARS, MAX_ELEMENTS
from app.schemas.requests import MAX_CHAT_MESSAGES
from tests.conftest import seed_example, serve


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
