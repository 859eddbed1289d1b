"""``/metrics`` against what a scripted sequence of requests did (fake model, real HTTP)."""

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.archive.service import Archive
from app.errors import ArchiveFileNotFound
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.observability.metrics import Metrics
from tests.conftest import seed_example, serve

REPLY = "The forest was quiet and the river ran cold under the old stone bridge tonight."
P = "writer_assistant_"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: dict, name: str, **labels: str) -> float:
    """One sample's value (KeyError when the scrape lacks it)."""
    return scrape[(P + name, frozenset(labels.items()))]


def series(scrape: dict, name: str) -> list:
    """The samples of one name, whatever their labels."""
    return [k for k in scrape if k[0] == P + name]


def done_event(body: str) -> dict:
    """The payload of the ``done`` event of an SSE body."""
    event = None
    for line in body.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "done":
            return json.loads(line.split(":", 1)[1])
    raise AssertionError(f"no done event in {body[:300]}")


@pytest.fixture
def slowish(settings):
    """A server whose fake model takes 30 ms a token and whose queue holds no waiter."""
    generator = FakeGenerator(replies=[REPLY], token_delay_s=0.03)
    app = create_app(settings.replace(queue_max_waiting=0, rate_limit_per_minute=0,
                                      rate_limit_concurrent=0),
                     generator=generator)
    with serve(app) as base:
        yield base, generator


async def test_metrics_agree_with_a_scripted_sequence_of_requests(slowish):
    base, generator = slowish
    path = "/api/v1/generate-chapter"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        usages = []
        for _ in range(3):
            answer = await client.post(path, json=seed_example())
            assert answer.status_code == 200
            usages.append(answer.json()["usage"])
        stream = asyncio.create_task(client.post(f"{path}/stream", json=seed_example()))
        for _ in range(100):  # until the stream holds the model
            during = samples((await client.get("/metrics")).text)
            if value(during, "requests_running") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(during, "requests_running") == 1
        refused = await client.post(path, json=seed_example())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        streamed = await stream
        usages.append(done_event(streamed.text)["usage"])
        bad = await client.post(path, json={"structured_context": 5})
        assert bad.status_code == 422
        scrape = await client.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    after = samples(scrape.text)
    labels = {"agent": "writer", "operation": "generate-chapter"}

    assert value(after, "requests_running") == 0 and value(after, "requests_waiting") == 0
    assert value(after, "rejections_total", reason="queue_full") == 1
    assert value(after, "rejections_total", reason="invalid_request") == 1
    assert not series(after, "backend_errors_total")
    assert value(after, "generations_total", finish_reason="stop", **labels) == 4
    assert value(after, "prompt_tokens_total", agent="writer") == sum(
        u["prompt_tokens"] for u in usages)
    assert value(after, "completion_tokens_total", agent="writer") == sum(
        u["completion_tokens"] for u in usages)
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "queue_time_seconds"):
        assert value(after, f"{histogram}_count", **labels) == 4, histogram
    # The fake yields one token per delta: a generation of n tokens has n - 1 gaps of ~30 ms.
    gaps = sum(u["completion_tokens"] - 1 for u in usages)
    assert value(after, "inter_token_latency_seconds_count", **labels) == gaps
    assert value(after, "inter_token_latency_seconds_sum", **labels) >= gaps * 0.02
    assert value(after, "inter_token_latency_seconds_bucket", le="0.01", **labels) == 0
    assert generator.produced == [u["completion_tokens"] for u in usages]


async def test_a_failure_is_counted_once_as_a_backend_error(settings):
    generator = FakeGenerator(replies=[REPLY], fail_after=3)
    app = create_app(settings, generator=generator)
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            plain = await client.post("/api/v1/generate-chapter", json=seed_example())
            streamed = await client.post("/api/v1/generate-chapter/stream", json=seed_example())
            scrape = samples((await client.get("/metrics")).text)
    assert plain.status_code == 502
    assert "event: error" in streamed.text and "generation_failed" in streamed.text
    assert value(scrape, "backend_errors_total", code="generation_failed") == 2
    assert not series(scrape, "rejections_total")
    assert not series(scrape, "generations_total")


def test_apps_keep_their_own_figures(client, settings):
    client.post("/api/v1/generate-chapter", json=seed_example())
    other = create_app(settings, generator=FakeGenerator())
    assert other.state.services.metrics.registry is not client.app.state.services.metrics.registry
    mine = samples(client.get("/metrics").text)
    assert value(mine, "generations_total", agent="writer", operation="generate-chapter",
                 finish_reason="stop") == 1
    assert not series(samples(other.state.services.metrics.render().decode()),
                      "generations_total")


class _Store:
    """Just enough of ChromaStore for listing and deleting."""

    location, mode, name = "memory", "embedded", "test"

    def __init__(self) -> None:
        self.files = {"a.txt": ["a-0", "a-1"]}

    def ids(self, where):
        return list(self.files.get(where["file"], []))

    def delete(self, *, ids):
        self.files = {f: i for f, i in self.files.items() if i != ids}

    def get(self, where=None, *, texts=True):
        return []


def test_archive_operations_are_timed_failures_included(settings):
    metrics = Metrics()
    archive = Archive(settings.archive, embedder=None, store=_Store(), metrics=metrics)
    archive.delete_file("a.txt")
    with pytest.raises(ArchiveFileNotFound):
        archive.delete_file("a.txt")
    archive.files()
    scrape = samples(metrics.render().decode())
    assert value(scrape, "archive_operation_seconds_count", operation="delete") == 2
    assert value(scrape, "archive_operation_seconds_count", operation="files") == 1


def test_refusals_by_the_middleware_are_counted(settings):
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    key = "k" * 20
    app = create_app(settings.replace(api_keys=SecretStr(f"alice:{key}"), rate_limit_per_minute=2,
                                      rate_limit_concurrent=0), generator=FakeGenerator())
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        assert client.post("/api/v1/tokens/count", json={"text": "x"}).status_code == 401
        assert client.post("/api/v1/tokens/count", json={"text": "x"},
                           headers=auth).status_code == 200
        assert client.get("/metrics", headers=auth).status_code == 200  # the second of 2
        assert client.post("/api/v1/tokens/count", json={"text": "x"},
                           headers=auth).status_code == 429
    scrape = samples(app.state.services.metrics.render().decode())
    assert value(scrape, "rejections_total", reason="unauthenticated") == 1
    assert value(scrape, "rejections_total", reason="rate_limited") == 1
