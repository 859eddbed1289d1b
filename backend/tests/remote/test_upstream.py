"""The remote backend against a scripted fake upstream on loopback: upstream failures and
overload map onto our envelope, a mid-stream failure becomes one ``error`` event, a client that
disconnects closes the upstream stream, a down server is a 503 and is retried at startup, and
the tokenizer check refuses a server that serves another model."""

import gc
import json
import time
import tracemalloc

import httpx
import pytest
from httpx_sse import connect_sse

from app.config import Settings
from app.errors import ModelUnavailable
from app.llm.remote import RemoteGenerator, context_exceeded, retry_after_seconds
from app.main import create_app
from tests.conftest import seed_example
from tests.remote.conftest import remote_settings
from tests.remote.servers import (
    CONTEXT_EXCEEDED,
    Upstream,
    fake_upstream,
    free_port,
    serve,
    wait_for_model,
)

CHAPTER = "/api/v1/generate-chapter"


def events_of(base: str, path: str, body: dict) -> list[tuple[str, dict]]:
    with (httpx.Client(base_url=base, timeout=60) as client,
          connect_sse(client, "POST", path, json=body) as source):
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def test_generates_through_the_upstream(fake_app, script):
    response = httpx.post(f"{fake_app}{CHAPTER}", json={**seed_example(), "max_tokens": 20},
                          timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["chapter_text"] == "Aria walked on."
    assert body["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3  # no usage chunk: one piece per token
    sent = script.requests[-1]
    assert sent["stream"] is True and sent["max_tokens"] == 20
    assert sent["top_k"] == 40 and sent["repeat_penalty"] == 1.1  # llama.cpp's extra fields
    assert sent["model"] == "fake-model"
    assert sent["messages"][0]["role"] == "system"


def test_the_servers_cached_prompt_tokens_are_passed_through(fake_app, script):
    script.usage = {"prompt_tokens": 120, "completion_tokens": 3, "total_tokens": 123,
                    "prompt_tokens_details": {"cached_tokens": 96}}
    try:
        response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    finally:
        script.usage = None
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == 120
    assert usage["prompt_tokens_details"] == {"cached_tokens": 96}


def test_json_agents_ask_for_the_schema_the_way_the_server_takes_it(fake_app, script):
    script.pieces = ['{"suggestions": [{"issue": "Flat.", ', '"suggestion": "Add smell.", ',
                     '"priority": "high"}]}']
    body = {**seed_example(), "chapter_to_review": "Aria walked.", "max_tokens": 50}
    response = httpx.post(f"{fake_app}/api/v1/editor-review", json=body, timeout=60)
    assert response.status_code == 200, response.text
    fmt = script.requests[-1]["response_format"]
    # llama-cpp-python's server takes only json_object with a schema.
    assert fmt["type"] == "json_object" and fmt["schema"]["type"] == "object"
    assert "suggestions" in fmt["schema"]["properties"]
    assert response.json()["suggestions"][0]["suggestion"] == "Add smell."


def test_mid_stream_failure_is_one_error_event(fake_app, script):
    script.mode = "drop"
    events = events_of(fake_app, f"{CHAPTER}/stream", {**seed_example(), "max_tokens": 30})
    names = [name for name, _ in events]
    assert names[0] == "meta"
    assert names.count("token") == 3
    assert names[-1] == "error" and names.count("error") == 1 and "done" not in names
    assert events[-1][1]["code"] == "generation_failed"
    assert "broke after 3 pieces" in events[-1][1]["message"]


def test_stream_without_a_finish_reason_is_an_error_event(fake_app, script):
    script.mode = "nofinish"
    events = events_of(fake_app, f"{CHAPTER}/stream", {**seed_example(), "max_tokens": 30})
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1]["code"] == "generation_failed"


@pytest.mark.parametrize(("status", "code"), [(429, "model_overloaded"),
                                              (503, "model_unavailable")])
def test_upstream_overload_maps_to_our_envelope_with_its_retry_after(fake_app, script, status,
                                                                      code):
    script.mode, script.retry_after = str(status), "11"
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == status
    assert response.headers["retry-after"] == "11"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["details"]["upstream_status"] == status
    assert error["details"]["retry_after_s"] == 11


def test_a_model_servers_long_retry_after_is_capped(fake_app, script):
    script.mode, script.retry_after = "503", "86400"  # "come back tomorrow"
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert response.json()["error"]["type"] == "server_error"


def test_other_upstream_errors_are_502(fake_app, script):
    script.mode = "500"
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "generation_failed"


@pytest.mark.parametrize("mode", ["exceed_context_size_error", "context_length_exceeded"])
def test_upstream_context_exceeded_is_our_400_that_says_to_shorten_the_context(fake_app, script,
                                                                                mode):
    """llama-server's and OpenAI's "context exceeded" 400 is the caller's to fix: our 400
    context_length_exceeded with the server's figures, never a 502 nor the server's text."""
    script.mode = mode
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert "shorten" in error["message"]
    assert error["details"]["needed_tokens"] == 5000
    assert error["details"]["available_tokens"] == 4096
    assert error["details"]["upstream_status"] == 400
    assert "try increasing it" not in response.text and "Please reduce" not in response.text
    assert len(script.requests) == 1  # the caller's to fix: not retried


@pytest.mark.parametrize(("body", "figures"), [
    (CONTEXT_EXCEEDED["exceed_context_size_error"], (5000, 4096)),  # llama-server
    (CONTEXT_EXCEEDED["context_length_exceeded"]["error"], (5000, 4096)),  # OpenAI's object
    ({"object": "error", "type": "BadRequestError", "code": 400, "param": None,  # vLLM
      "message": "This model's maximum context length is 2048 tokens. However, you requested "
                 "2100 tokens (1100 in the messages, 1000 in the completion)."}, (2100, 2048)),
    ({"error": {"message": "the request exceeds the available context size, try increasing "
                           "it", "type": "exceed_context_size_error", "code": 400}}, None),
])
def test_context_exceeded_answers_of_each_server_family_are_recognised(body, figures):
    error = context_exceeded(400, body)
    assert error is not None and error.code == "context_length_exceeded"
    if figures is None:
        assert "needed_tokens" not in error.details
    else:
        assert (error.details["needed_tokens"], error.details["available_tokens"]) == figures


@pytest.mark.parametrize(("status", "body"), [
    (400, {"error": {"message": "response_format json_schema is not supported",
                     "type": "invalid_request_error"}}),
    (400, "plain text"),
    (500, CONTEXT_EXCEEDED["context_length_exceeded"]),
])
def test_other_answers_are_no_context_exceeded(status, body):
    assert context_exceeded(status, body) is None


def test_other_upstream_400s_are_502_without_the_servers_text(fake_app, script):
    """Another 400 refuses a request we built (a schema mode the server lacks, say): nothing
    the caller can change, so 502 generation_failed; the server's text goes to our log."""
    script.mode, script.message = "400", "unsupported response_format at /srv/secret/grammar"
    response = httpx.post(f"{fake_app}{CHAPTER}", json=seed_example(), timeout=60)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "generation_failed" and error["details"]["upstream_status"] == 400
    assert "/srv/secret" not in response.text and "response_format" not in response.text


def test_the_token_count_cache_is_bounded_in_bytes(upstream, script):
    """Counts of long texts are remembered, not the texts: 10 distinct texts of 200 kB each
    (2 MB) leave well under 500 kB behind."""
    generator = RemoteGenerator.connect(Settings(llm_backend="openai",
                                                 llm_base_url=f"{upstream}/v1").model)
    assert generator.token_source == "llama-cpp-python"  # counts come from the server
    first = generator.count_tokens("0 " + "word " * 40_000)
    tracemalloc.start()  # traces what is allocated from here on: the texts below
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 11):
            generator.count_tokens(f"{i} " + "word " * 40_000)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 500_000, f"{kept} bytes kept by the count cache"
    script.fail_tokenize = ["400"]  # a call to the server would fail now
    assert generator.count_tokens("0 " + "word " * 40_000) == first  # still cached
    assert script.fail_tokenize == ["400"]


def test_client_disconnect_closes_the_upstream_stream(fake_app, script):
    script.mode = "slow"
    closed_before = script.streams_closed
    body = {**seed_example(), "max_tokens": 2000}
    with (httpx.Client(base_url=fake_app, timeout=60) as client,
          connect_sse(client, "POST", f"{CHAPTER}/stream", json=body) as source):
        tokens = 0
        for event in source.iter_sse():
            tokens += event.event == "token"
            if tokens == 3:
                break
    deadline = time.monotonic() + 10
    while script.streams_closed == closed_before and time.monotonic() < deadline:
        time.sleep(0.05)
    # The fake streams for a minute; it stopped because our side closed the upstream response.
    assert script.streams_closed == closed_before + 1


def test_upstream_down_is_503_then_retried_until_it_is_up(tmp_path):
    port = free_port()
    settings = remote_settings(f"http://127.0.0.1:{port}/v1", tmp_path,
                               llm_connect_retry_s=0.2)
    with serve(create_app(settings)) as app:
        deadline = time.monotonic() + 10
        health = httpx.get(f"{app}/health").json()
        while health["model_status"] != "error" and time.monotonic() < deadline:
            time.sleep(0.05)
            health = httpx.get(f"{app}/health").json()
        assert health["model_status"] == "error"
        assert "unreachable" in health["error"] and "retrying" in health["error"]
        response = httpx.post(f"{app}{CHAPTER}", json=seed_example(), timeout=30)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"
        assert "Retry-After" in response.headers

        with serve(fake_upstream(Upstream()), port=port):
            assert wait_for_model(app, timeout=20)["model_status"] == "ready"
            assert httpx.post(f"{app}{CHAPTER}", json=seed_example(),
                              timeout=30).status_code == 200
        # The server went away after startup: generation answers 503 again.
        response = httpx.post(f"{app}{CHAPTER}", json=seed_example(), timeout=30)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"


def test_tokenizer_mismatch_is_refused(upstream, script):
    script.tokenize_offset = 1  # the server counts one token more: another model
    settings = Settings(llm_backend="openai", llm_base_url=f"{upstream}/v1")
    with pytest.raises(ModelUnavailable, match="disagree on the probe texts"):
        RemoteGenerator.connect(settings.model)


def test_tokenizer_mismatch_only_warns_when_the_server_counts(upstream, script, caplog):
    script.tokenize_offset = 1
    settings = Settings(llm_backend="openai", llm_base_url=f"{upstream}/v1",
                        llm_tokenizer="server")
    generator = RemoteGenerator.connect(settings.model)
    assert "disagree on the probe texts" in caplog.text
    assert generator.count_tokens("Hello world") == 2 + 1  # the server's count


def test_llama_server_dialect(upstream, script):
    script.dialect, script.n_ctx = "llama-server", 4096
    generator = RemoteGenerator.connect(Settings(llm_backend="openai",
                                                 llm_base_url=f"{upstream}/v1").model)
    assert generator.token_source == "llama-server"
    assert generator.n_ctx == 4096  # from /props
    assert generator.count_tokens("Hello world") == 2
    from app.llm.protocol import SamplingParams

    request = generator._request([], SamplingParams(max_tokens=5, json_schema={"type": "object"}))
    assert request["response_format"]["type"] == "json_schema"


def test_no_tokenize_endpoint_counts_locally(upstream, script):
    script.dialect = "none"
    generator = RemoteGenerator.connect(Settings(llm_backend="openai",
                                                 llm_base_url=f"{upstream}/v1").model)
    assert generator.token_source == "local"
    assert generator.count_tokens("Hello world") == 2
    with pytest.raises(ModelUnavailable, match="no tokenize endpoint"):
        RemoteGenerator.connect(Settings(llm_backend="openai", llm_base_url=f"{upstream}/v1",
                                         llm_tokenizer="server").model)


def test_api_key_is_sent_and_never_shown(upstream, script):
    settings = Settings(llm_backend="openai", llm_base_url=f"{upstream}/v1",
                        llm_api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(settings)
    RemoteGenerator.connect(settings.model)
    assert script.authorization[-1] == "Bearer sk-secret-123"


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_seconds({"retry-after": "soon"}) is None


def test_closing_the_stream_between_tokens_closes_the_upstream(upstream, script):
    # The path a runner takes when its consumer stops (aclose at a yield, not during a read).
    import asyncio

    from app.llm.protocol import ChatMessage, SamplingParams

    script.mode = "slow"
    generator = RemoteGenerator.connect(Settings(llm_backend="openai",
                                                 llm_base_url=f"{upstream}/v1").model)
    closed_before = script.streams_closed

    async def run() -> int:
        stream = generator.stream([ChatMessage("user", "Go on.")], SamplingParams(max_tokens=900))
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        await stream.aclose()
        deadline = time.monotonic() + 10
        # The fake upstream's counter, set from its own thread: polled.
        while script.streams_closed == closed_before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert script.streams_closed == closed_before + 1  # before this loop ends
        assert not generator._lock.locked()  # the next generation can run
        return received

    assert asyncio.run(run()) == 3
