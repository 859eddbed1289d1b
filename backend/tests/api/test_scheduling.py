"""The scheduler over HTTP with a scripted model: one deadline per request, priority classes,
a stalled stream reader releasing the model, and model work off the default thread pool."""

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from app.context.summaries import SUMMARIZER_ROLE
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example, serve


def long_story(chapters: int = 8, sentences: int = 80) -> dict:
    """A story that overflows a 2,048-token window, so it must be distilled."""
    return {"structured_context": {"chapters": [
        {"number": n, "content": " ".join(f"In chapter {n} the hare ran {i} times."
                                          for i in range(sentences))}
        for n in range(1, chapters + 1)]}, "max_tokens": 50}


def summarizer_or(reply: str):
    def answer(messages, params):
        if messages[0].content.startswith(SUMMARIZER_ROLE):
            return " ".join(["summary"] * 40)
        return reply
    return answer


def test_the_deadline_covers_distillation(settings):
    """Slow summaries use up the request's one deadline before generation starts: 504 for
    JSON, an error event for a stream, and the agent's own generation never runs."""
    generator = FakeGenerator(replies=[summarizer_or("The chapter.")], context_window=2048,
                              token_delay_s=0.05)
    app = create_app(settings.replace(generation_timeout_s=0.5),
                     generator=generator)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        started = time.perf_counter()
        answer = client.post("/api/v1/generate-chapter", json=long_story())
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "generation_timeout"
        assert time.perf_counter() - started < 30
        assert all(messages[0].content.startswith(SUMMARIZER_ROLE)
                   for messages, _ in generator.calls)  # only summaries were attempted
        stream = client.post("/api/v1/generate-chapter/stream", json=long_story())
        events = [line for line in stream.text.splitlines() if line.startswith("event:")]
        assert "event: progress" in events
        assert events[-1] == "event: error" and "event: meta" not in events
        error = json.loads([line for line in stream.text.splitlines()
                            if line.startswith("data:")][-1][5:])
        assert error["code"] == "generation_timeout"


async def test_interactive_requests_go_before_background_warming(settings):
    generator = FakeGenerator(replies=[" ".join(["word"] * 40)], token_delay_s=0.05)
    app = create_app(settings, generator=generator)
    body = seed_example()
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            holder = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                     json={**body, "max_tokens": 40}))
            await asyncio.sleep(0.2)
            warm = asyncio.create_task(client.post("/api/v1/context/warm", json={
                "operation": "generate-chapter", "request": body}))
            await asyncio.sleep(0.2)
            chat = asyncio.create_task(client.post("/api/v1/llm-chat", json={
                **body, "messages": [{"role": "user", "content": "Who is Aria?"}],
                "max_tokens": 4}))
            responses = await asyncio.gather(holder, warm, chat)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    # the interactive chat, queued after the background warm-up, ran before it
    tasks = [messages[-1].content for messages, _ in generator.calls]
    assert "Who is Aria?" in tasks[1] and "Write chapter" in tasks[2]
    assert [params.max_tokens for _, params in generator.calls] == [40, 4, 1]
    warmed = responses[1].json()
    assert warmed["shared_prefix_tokens"] > 0
    assert warmed["usage"]["completion_tokens"] <= 1


def test_a_stalled_stream_reader_releases_the_model(settings):
    """A client that stops reading a long stream: once the socket buffers are full the send
    times out (SSE_SEND_TIMEOUT_S), the generation stops and the next request runs."""
    piece = "x" * 16_384
    generator = FakeGenerator(replies=[" ".join([piece] * 4_000)])  # ~64 MB of tokens
    app = create_app(settings.replace(sse_send_timeout_s=0.5, queue_max_wait_s=60),
                     generator=generator)
    with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        body = json.dumps({**seed_example(), "max_tokens": 4_000}).encode()
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"POST /api/v1/generate-chapter/stream HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
        try:  # never read from it
            deadline = time.monotonic() + 10
            while not generator.produced and time.monotonic() < deadline:
                time.sleep(0.05)
            answer = httpx.post(f"{base}/api/v1/generate-chapter",
                                json={**seed_example(), "max_tokens": 3}, timeout=60)
            assert answer.status_code == 200, answer.text
        finally:
            stalled.close()
    assert 0 < generator.produced[0] < 4_000  # the stalled generation was stopped


async def test_model_work_does_not_wait_for_a_full_default_thread_pool(settings):
    """Archive uploads run on the default thread pool; while it is full, a generation (its
    assembly and token counting included) still runs, and /ready still answers."""
    generator = FakeGenerator(replies=["The forest was quiet."])
    app = create_app(settings, generator=generator)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    executor_size = min(32, (__import__("os").cpu_count() or 1) + 4)
    blockers = [loop.run_in_executor(None, release.wait, 30) for _ in range(executor_size * 2)]
    try:
        transport = httpx.ASGITransport(app=app)
        async with (app.router.lifespan_context(app),
                    httpx.AsyncClient(transport=transport, base_url="http://app") as client):
            answer = await asyncio.wait_for(
                client.post("/api/v1/generate-chapter", json=seed_example()), timeout=10)
            assert answer.status_code == 200, answer.text
            counted = await asyncio.wait_for(
                client.post("/api/v1/tokens/count", json={"text": "Hello there"}), 10)
            assert counted.json()["tokens"] == 2
            assert (await asyncio.wait_for(client.get("/ready"), 10)).status_code == 200
        assert not any(b.done() for b in blockers)  # the pool really was full throughout
    finally:
        release.set()
        await asyncio.gather(*blockers)


@pytest.mark.parametrize("path", ["/api/v1/context/warm", "/api/v1/context/preview"])
def test_warm_and_preview_refuse_a_request_the_operation_does_not_take(client, path):
    answer = client.post(path, json={"operation": "editor-review", "request": seed_example()})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"
