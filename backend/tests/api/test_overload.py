"""Overload, cancellation and timeouts over real HTTP on loopback, with a slow fake model."""

import asyncio
import json
import time

import httpx
import pytest

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example, serve

LONG_REPLY = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def slow(settings):
    """A server whose fake model takes 20 ms a token; yields (base URL, generator)."""
    generator = FakeGenerator(replies=[LONG_REPLY], token_delay_s=0.02)
    app = create_app(settings.replace(queue_max_waiting=1, queue_max_wait_s=30),
                     generator=generator)
    with serve(app) as base:
        yield base, generator


async def read_tokens(client, path, body, count):
    """Open a stream, read ``count`` token events, then close the connection."""
    seen = 0
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: token"):
                seen += 1
                if seen == count:
                    break
    return seen


async def test_full_queue_is_a_fast_503_and_a_stream_is_never_interrupted(slow):
    base, _generator = slow
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        running = asyncio.create_task(client.post("/api/v1/generate-chapter/stream",
                                                  json={**seed_example(), "max_tokens": 60}))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                  json={**seed_example(), "max_tokens": 5}))
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        refused = await client.post("/api/v1/generate-chapter", json=seed_example())
        elapsed = time.perf_counter() - start
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        refused_stream = await client.post("/api/v1/generate-chapter/stream", json=seed_example())
        assert refused_stream.status_code == 503  # refused before the stream starts
        first = await running
        events = [line for line in first.text.splitlines() if line.startswith("event:")]
        assert events[-1] == "event: done" and "event: error" not in events
        second = await waiting
        assert second.status_code == 200
        assert second.json()["timings"]["queue_ms"] > 0
    print(f"503 answered in {elapsed * 1000:.0f} ms")  # measured, not asserted


async def test_disconnect_stops_generation_within_two_tokens_and_frees_the_model(slow):
    base, generator = slow
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        seen = await read_tokens(client, "/api/v1/generate-chapter/stream",
                                 {**seed_example(), "max_tokens": 300}, 5)
        await asyncio.sleep(0.5)  # 25 tokens' time: a generation that went on would show it
        assert generator.produced[0] <= seen + 2
        after = await client.post("/api/v1/generate-chapter", json={**seed_example(),
                                                                   "max_tokens": 3})
        assert after.status_code == 200


async def test_client_that_leaves_while_queued_never_starts(slow):
    base, generator = slow
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        running = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                  json={**seed_example(), "max_tokens": 40}))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(read_tokens(client, "/api/v1/generate-chapter/stream",
                                                 {**seed_example(), "max_tokens": 40}, 1))
        await asyncio.sleep(0.2)
        queued.cancel()
        await asyncio.sleep(0.1)
        assert (await running).status_code == 200
        await asyncio.sleep(0.3)
        assert len(generator.calls) == 1  # the queued stream never reached the model


async def test_queue_timeout_is_503_for_json_and_an_error_event_for_streams(settings):
    generator = FakeGenerator(replies=[LONG_REPLY], token_delay_s=0.02)
    app = create_app(settings.replace(queue_max_wait_s=0.2), generator=generator)
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            running = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                      json={**seed_example(), "max_tokens": 50}))
            await asyncio.sleep(0.2)
            late = await client.post("/api/v1/generate-chapter", json=seed_example())
            assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
            late_stream = await client.post("/api/v1/generate-chapter/stream",
                                            json=seed_example())
            assert late_stream.status_code == 200
            last = [line for line in late_stream.text.splitlines() if line.startswith("data:")][-1]
            assert json.loads(last[5:])["code"] == "queue_timeout"
            assert (await running).status_code == 200


async def test_generation_cap_ends_with_504_or_an_error_event(settings):
    generator = FakeGenerator(replies=[LONG_REPLY], token_delay_s=0.02)
    app = create_app(settings.replace(generation_timeout_s=0.3),
                     generator=generator)
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {**seed_example(), "max_tokens": 200}
            capped = await client.post("/api/v1/generate-chapter", json=body)
            assert capped.status_code == 504
            assert capped.json()["error"]["code"] == "generation_timeout"
            stream = await client.post("/api/v1/generate-chapter/stream", json=body)
            names = [line for line in stream.text.splitlines() if line.startswith("event:")]
            assert names[-1] == "event: error" and names.count("event: error") == 1
            assert "event: done" not in names
            quick = await client.post("/api/v1/generate-chapter",
                                      json={**seed_example(), "max_tokens": 3})
            assert quick.status_code == 200  # the model was freed


async def test_json_client_that_leaves_while_queued_never_starts(slow):
    base, generator = slow
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        running = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                  json={**seed_example(), "max_tokens": 60}))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(client.post("/api/v1/generate-chapter",
                                                 json={**seed_example(), "max_tokens": 5}))
        await asyncio.sleep(0.3)
        queued.cancel()  # closes the connection while it waits
        assert (await running).status_code == 200
        await asyncio.sleep(0.5)
        assert len(generator.calls) == 1


async def test_streams_send_keep_alive_comments_unbuffered(settings):
    generator = FakeGenerator(replies=["slow words " * 20], token_delay_s=0.05)
    app = create_app(settings.replace(sse_ping_seconds=0.2), generator=generator)
    with serve(app) as base:
        async with (httpx.AsyncClient(base_url=base, timeout=30) as client,
                    client.stream("POST", "/api/v1/generate-chapter/stream",
                                  json={**seed_example(), "max_tokens": 30}) as response):
            assert response.headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in response.headers  # nothing buffers/compresses
            lines = [line async for line in response.aiter_lines()]
    assert any(line.startswith(":") for line in lines)  # keep-alive comments
    assert lines.count("event: done") == 1


async def test_the_service_survives_a_model_failure_mid_stream(settings):
    generator = FakeGenerator(replies=["one two three four five six"], fail_after=2)
    app = create_app(settings, generator=generator)
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            failed = await client.post("/api/v1/generate-chapter/stream", json=seed_example())
            assert "event: error" in failed.text
            generator.fail_after = None
            assert (await client.get("/ready")).status_code == 200
            after = await client.post("/api/v1/generate-chapter", json=seed_example())
            assert after.status_code == 200
