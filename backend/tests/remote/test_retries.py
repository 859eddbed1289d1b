"""Retry policies (``app.llm.retry``) against the scripted fake upstream: a transient 503 is
retried and the request succeeds, a 429's ``Retry-After`` is waited for up to the cap and
passed to the caller above it, attempts and seconds are capped and the last error is ours, a
stream that yielded tokens is never retried, token counts are retried too; and the startup
policy waits per cause, with no retry inside it."""

import asyncio
import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from app.config import Settings
from app.errors import GenerationFailed, ModelOverloaded, ModelUnavailable
from app.llm.protocol import ChatMessage, SamplingParams, TokenDelta
from app.llm.remote import RemoteGenerator
from app.llm.retry import (
    UPSTREAM_RETRY,
    UpstreamRetry,
    is_retryable,
    startup_retrying,
    startup_wait_s,
)
from tests.conftest import seed_example

CHAPTER = "/api/v1/generate-chapter"
#: The default policy's bounds with waits short enough for tests.
FAST = UpstreamRetry(backoff_s=0.01, max_backoff_s=0.01, jitter_s=0.0)
MESSAGES = [ChatMessage("user", "Go on.")]


class RetryEverything(UpstreamRetry):
    """A policy that would retry any error, to show what is retried is a matter of where."""

    def should_retry(self, error: BaseException) -> bool:
        return True


def events_of(base: str, path: str, body: dict) -> list[tuple[str, dict]]:
    with (httpx.Client(base_url=base, timeout=60) as client,
          connect_sse(client, "POST", path, json=body) as source):
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def connect(upstream: str, policy: UpstreamRetry | None = None) -> RemoteGenerator:
    generator = RemoteGenerator.connect(Settings(llm_backend="openai",
                                                 llm_base_url=f"{upstream}/v1").model)
    if policy is not None:
        generator.retry = policy
    return generator


# --- upstream: through our API -----------------------------------------------------------------
def test_a_transient_503_is_retried_and_the_stream_succeeds_once(fake_app, script):
    script.fail_first, script.retry_after = ["503", "503"], ""  # no Retry-After: backoff
    events = events_of(fake_app, f"{CHAPTER}/stream", {**seed_example(), "max_tokens": 30})
    names = [name for name, _ in events]
    assert names[-1] == "done" and "error" not in names
    assert "".join(data["text"] for name, data in events if name == "token") == "Aria walked on."
    assert len(script.requests) == 3  # two 503s, then the stream


def test_a_retry_after_above_the_cap_goes_to_the_caller_at_once(fake_app, script):
    assert UPSTREAM_RETRY.max_retry_after_s < 11
    script.mode, script.retry_after = "429", "11"
    started = time.monotonic()
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert time.monotonic() - started < UPSTREAM_RETRY.max_retry_after_s
    assert response.status_code == 429
    assert response.headers["retry-after"] == "11"
    assert response.json()["error"]["code"] == "model_overloaded"
    assert len(script.requests) == 1


def test_attempts_are_capped_and_the_last_error_is_the_domain_error(fake_app, script):
    script.mode, script.retry_after = "503", "0"
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert error["details"]["upstream_status"] == 503
    assert len(script.requests) == UPSTREAM_RETRY.max_attempts == 4


def test_a_stream_that_yielded_tokens_is_not_retried(fake_app, script):
    script.mode = "drop"  # three pieces, then the connection breaks
    events = events_of(fake_app, f"{CHAPTER}/stream", {**seed_example(), "max_tokens": 30})
    assert [name for name, _ in events].count("token") == 3
    assert events[-1][0] == "error" and events[-1][1]["code"] == "generation_failed"
    assert len(script.requests) == 1


# --- upstream: the generator -------------------------------------------------------------------
async def test_a_429s_retry_after_is_waited_for(upstream, script):
    generator = connect(upstream)
    script.fail_first, script.retry_after = ["429"], "1"
    started = time.monotonic()
    completion = await generator.generate(MESSAGES, SamplingParams(max_tokens=20))
    assert time.monotonic() - started >= 1.0
    assert completion.text == "Aria walked on."
    assert len(script.requests) == 2
    await generator.aclose()


async def test_a_retry_after_is_honoured_only_up_to_the_cap(upstream, script):
    generator = connect(upstream, UpstreamRetry(max_retry_after_s=0.5))
    script.mode, script.retry_after = "429", "1"
    with pytest.raises(ModelOverloaded) as raised:
        await generator.generate(MESSAGES, SamplingParams(max_tokens=20))
    assert raised.value.retry_after == 1
    assert len(script.requests) == 1
    await generator.aclose()


async def test_total_seconds_are_capped(upstream, script):
    policy = UpstreamRetry(max_attempts=10, backoff_s=0.3, max_backoff_s=0.3, jitter_s=0.0,
                           max_total_s=0.5)
    generator = connect(upstream, policy)
    script.mode, script.retry_after = "503", ""
    started = time.monotonic()
    with pytest.raises(ModelUnavailable):
        await generator.generate(MESSAGES, SamplingParams(max_tokens=20))
    # One wait of 0.3 s fits in 0.5 s, a second would not: two attempts, no wait past the cap.
    assert len(script.requests) == 2
    assert time.monotonic() - started < 0.5 + 1.0
    await generator.aclose()


async def test_a_stream_is_retried_only_before_its_first_token(upstream, script):
    generator = connect(upstream, RetryEverything(backoff_s=0.01, jitter_s=0.0))
    script.mode = "drop"
    received: list[str] = []
    with pytest.raises(GenerationFailed, match="broke after 3 pieces"):
        async for item in generator.stream(MESSAGES, SamplingParams(max_tokens=20)):
            if isinstance(item, TokenDelta):
                received.append(item.text)
    assert received == ["Aria ", "walked ", "on."]  # never repeated
    assert len(script.requests) == 1
    await generator.aclose()


async def test_an_unreachable_server_is_retried_within_the_bounds(tmp_path):
    from tests.remote.servers import Upstream, fake_upstream, free_port, serve

    port = free_port()
    with serve(fake_upstream(Upstream()), port=port) as upstream:
        generator = connect(upstream, FAST)
    # The server is gone: the count before the generation fails after FAST's four attempts.
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="unreachable"):
        await generator.generate(MESSAGES, SamplingParams(max_tokens=20))
    assert time.monotonic() - started < FAST.max_total_s
    await generator.aclose()


def test_token_counting_retries_a_transient_failure(upstream, script):
    generator = connect(upstream, FAST)
    script.fail_tokenize, script.retry_after = ["503", "503"], "0"
    assert generator.count_tokens("Hello world") == 2
    assert script.fail_tokenize == []


# --- the predicate and the startup policy ------------------------------------------------------
def test_retryable_is_an_attribute_or_a_detail():
    class Flagged(Exception):
        retryable = True

    assert is_retryable(ModelUnavailable("down", retryable=True))
    assert is_retryable(Flagged())
    assert not is_retryable(ModelUnavailable("the tokenizers disagree"))
    assert not is_retryable(GenerationFailed("broke"))
    assert not is_retryable(ValueError("x"))


def test_startup_waits_per_cause():
    settings = Settings(llm_connect_retry_s=2, model_load_retry_s=30)
    assert startup_wait_s(settings, ModelUnavailable("down", retryable=True)) == 2
    assert startup_wait_s(settings, ModelUnavailable("not found")) == 30
    assert startup_wait_s(settings, RuntimeError("boom")) == 30
    off = settings.replace(llm_connect_retry_s=0)
    assert startup_wait_s(off, ModelUnavailable("down", retryable=True)) == 30


async def test_startup_retries_every_failure_until_it_succeeds():
    settings = Settings(llm_connect_retry_s=0.01, model_load_retry_s=0.02)
    outcomes: list[object] = [ModelUnavailable("down", retryable=True),
                              ModelUnavailable("the tokenizers disagree"), RuntimeError("boom"),
                              "model"]
    retries: list[tuple[str, float]] = []

    async def open_model() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retrying = startup_retrying(settings, lambda error, wait: retries.append((str(error), wait)))
    assert await retrying(open_model) == "model"
    assert retries == [("down", 0.01), ("the tokenizers disagree", 0.02), ("boom", 0.02)]


async def test_startup_does_not_retry_a_cancellation():
    calls = 0

    async def open_model() -> object:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    retrying = startup_retrying(Settings(model_load_retry_s=0.01), lambda *_: None)
    with pytest.raises(asyncio.CancelledError):
        await retrying(open_model)
    assert calls == 1
