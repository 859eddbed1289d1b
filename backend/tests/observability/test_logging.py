"""Structured logs: one JSON line per event with the request id; no story text unless
LOG_PROMPTS is on."""

import io
import json
import logging

import pytest
from fastapi.testclient import TestClient

from app.llm.fake import FakeGenerator
from app.main import create_app
from app.observability.logging import configure_logging
from tests.conftest import seed_example

STORY = "Zephyrine buried the obsidian compass beneath the ninth willow"
REPLY = "Quillon wept over the lantern of Marrowgate until dawn."


def story_request() -> dict:
    body = seed_example()
    body["structured_context"]["plot_elements"].append(
        {"type": "plot_point", "content": STORY, "priority": "high"})
    body["structured_context"]["chapters"] = [
        {"number": 1, "title": "The Willow", "content": f"{STORY}. Then she ran home."}]
    return body


def run_requests(settings, caplog) -> tuple[list[dict], str, list[str]]:
    """A plain, a streamed and a refused request; returns (JSON lines, every record's text
    with its extra fields, the request ids answered)."""
    app = create_app(settings, generator=FakeGenerator(replies=[REPLY]))
    buffer = io.StringIO()
    configure_logging(settings.observability, stream=buffer)
    ids = []
    with caplog.at_level(logging.DEBUG), TestClient(app) as client:
        plain = client.post("/api/v1/generate-chapter", json=story_request())
        streamed = client.post("/api/v1/generate-chapter/stream", json=story_request())
        refused = client.post("/api/v1/generate-chapter",
                              json={**story_request(), "max_tokens": 10**6})
        for response in (plain, streamed, refused):
            ids.append(response.headers.get("x-request-id"))
    assert (plain.status_code, streamed.status_code, refused.status_code) == (200, 200, 422)
    assert "event: done" in streamed.text
    records = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return lines, records + buffer.getvalue(), ids


def test_one_json_line_per_event_with_request_id_and_no_story_text(settings, caplog):
    lines, everything, ids = run_requests(settings, caplog)
    generations = [line for line in lines if line["message"] == "generation"]
    assert [g["streamed"] for g in generations] == [False, True]
    for event in generations:
        assert event["operation"] == "generate-chapter" and event["agent"] == "writer"
        assert event["prompt_tokens"] > 0 and event["completion_tokens"] == len(REPLY.split())
        assert event["finish_reason"] == "stop" and event["level"] == "INFO"
        assert {"queue_ms", "ttft_ms", "total_ms", "decode_tokens_per_s"} <= set(event)
        assert "prompt" not in event and "text" not in event
    refusals = [line for line in lines if line["message"] == "error_answer"]
    assert [(r["code"], r["status"]) for r in refusals] == [("invalid_request", 422)]
    if all(ids):  # the request-id middleware is installed
        assert [g["request_id"] for g in generations] == ids[:2]
        assert refusals[0]["request_id"] == ids[2]
    for marker in ("Zephyrine", "obsidian compass", "Quillon", "Marrowgate"):
        assert marker not in everything


def test_log_prompts_adds_the_prompt_and_the_text(settings, caplog):
    lines, everything, _ = run_requests(settings.replace(log_prompts=True),
                                        caplog)
    generations = [line for line in lines if line["message"] == "generation"]
    assert len(generations) == 2
    for event in generations:
        assert STORY in event["prompt"] and "<|im_start|>" in event["prompt"]
        assert event["text"] == REPLY
    assert "Zephyrine" in everything and "Marrowgate" in everything


def test_text_format_is_one_plain_line_per_event(settings):
    buffer = io.StringIO()
    configure_logging(settings.replace(log_format="text").observability, stream=buffer)
    try:
        logging.getLogger("app.test").warning("archive ready")
    finally:
        configure_logging(settings.observability)
    line = buffer.getvalue().strip()
    assert line.endswith("WARNING [None] app.test: archive ready")


@pytest.mark.parametrize("calls", [1, 3])
def test_configuring_twice_keeps_one_handler(settings, calls):
    for _ in range(calls):
        configure_logging(settings.observability)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "writer_assistant"]
    assert len(ours) == 1
