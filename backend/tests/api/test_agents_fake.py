"""Every endpoint through HTTP on the fake generator: shapes, SSE framing, bad input."""

import json

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example

EDITOR_JSON = json.dumps({"suggestions": [
    {"issue": "Flat opening", "suggestion": "Start with a sound.", "priority": "high"}]})
CHARACTER_JSON = json.dumps({"actions": ["steps back"], "dialog": ["Who's there?"],
                             "physicalSensations": ["cold hands"], "emotions": ["fear"],
                             "internalMonologue": ["Stay calm."]})
RATER_JSON = json.dumps({"score": 7, "opinion": "Tense.", "suggestions": ["More smell."]})
DETAILS_JSON = json.dumps({"name": "Aria", "age": "19", "appearance": "Tall.",
                           "personality": "Bold.", "background": "Forest-born.",
                           "motivations": "Find her brother.", "fears": "Fire."})
OUTLINES_JSON = json.dumps({"outlines": [
    {"number": 1, "title": "In", "summary": "She enters."},
    {"number": 2, "title": "Out", "summary": "She leaves."}]})

CASES = [
    ("generate-chapter", {}, "The forest was quiet.", "chapter_text"),
    ("modify-chapter", {"current_chapter": "Old text.", "user_request": "Make it darker."},
     "Dark text.", "modified_chapter"),
    ("flesh-out", {"text_to_flesh_out": "She runs."}, "She runs hard.", "fleshed_out_text"),
    ("editor-review", {"chapter_to_review": "Aria walked."}, EDITOR_JSON, "suggestions"),
    ("character-feedback", {"character_name": "Aria", "plot_point": "A wolf howls."},
     CHARACTER_JSON, "emotions"),
    ("rater-feedback", {"plot_point": "A wolf howls."}, RATER_JSON, "score"),
    ("generate-character-details", {"character_name": "Aria"}, DETAILS_JSON, "details"),
    ("regenerate-bio", {"character_name": "hero"}, "Aria grew up in the hills.", "bio"),
    ("generate-chapter-outlines", {"number_of_chapters": 2}, OUTLINES_JSON, "outlines"),
    ("llm-chat", {"messages": [{"role": "user", "content": "Who is Aria?"}]}, "A hero.",
     "message"),
]


@pytest.fixture
def make_client(settings):
    def make(*replies, **kw) -> TestClient:
        generator = FakeGenerator(replies=list(replies), **kw)
        return TestClient(create_app(settings, generator=generator))

    return make


@pytest.mark.parametrize(("operation", "fields", "reply", "key"), CASES)
def test_every_agent_endpoint_answers_json(operation, fields, reply, key, make_client):
    with make_client(reply) as client:
        response = client.post(f"/api/v1/{operation}", json={**seed_example(), **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body[key]
    report = body["context_metadata"]
    assert {e["id"] for e in report["elements"]} == {
        "plot_elements[0]", "character_contexts[0]", "user_requests[0]"}
    assert report["prompt_tokens"] + report["max_tokens"] <= report["n_ctx"]
    assert body["usage"]["prompt_tokens"] == report["prompt_tokens"]


def test_json_agent_repairs_once_then_succeeds(make_client):
    with make_client("{not json", RATER_JSON) as client:
        response = client.post("/api/v1/rater-feedback",
                               json={**seed_example(), "plot_point": "A wolf howls."})
    assert response.status_code == 200
    assert response.json()["attempts"] == 2


def test_json_agent_fails_clearly_after_repair(make_client):
    with make_client('{"score": 42, "opinion": "x", "suggestions": []}') as client:
        response = client.post("/api/v1/rater-feedback",
                               json={**seed_example(), "plot_point": "A wolf howls."})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "agent_output_invalid"
    assert "repair" in error["message"]


def read_events(client, path, body):
    with connect_sse(client, "POST", path, json=body) as source:
        assert source.response.headers["x-accel-buffering"] == "no"
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def test_stream_sends_meta_tokens_and_one_done(make_client):
    with make_client("The forest was quiet and cold.") as client:
        events = read_events(client, "/api/v1/generate-chapter/stream", seed_example())
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "done"
    assert names.count("done") == 1 and "error" not in names
    tokens = [data["text"] for name, data in events if name == "token"]
    assert len(tokens) > 1
    done = events[-1][1]
    assert done["text"] == "".join(tokens).strip()
    assert done["usage"]["completion_tokens"] == len(tokens)
    assert events[0][1]["context_metadata"]["agent"] == "writer"


def test_failure_mid_stream_becomes_one_error_event(make_client):
    with make_client("one two three four five", fail_after=2) as client:
        events = read_events(client, "/api/v1/flesh-out/stream",
                             {**seed_example(), "text_to_flesh_out": "She runs."})
    names = [name for name, _ in events]
    assert names[:3] == ["meta", "token", "token"]
    assert names[-1] == "error" and names.count("error") == 1 and "done" not in names
    assert events[-1][1]["code"] == "generation_failed"


def test_every_operation_streams(make_client):
    """Issue 11 made every agent stream (it was the chapter operations only)."""
    from app.agents.registry import REGISTRY

    with make_client("x") as client:
        paths = client.get("/openapi.json").json()["paths"]
    streams = sorted(p for p in paths if p.endswith(("/stream", "/rag/chat")))
    assert streams == sorted([f"/api/v1{spec.stream_route}" for spec in REGISTRY.values()]
                             + ["/api/v1/chapter-pipeline/stream"])
    assert "/api/v1/editor-review/stream" in streams
    assert "/api/v1/archive/rag/query/stream" in streams


def test_context_preview_returns_prompt_without_generating(client, fake):
    response = client.post("/api/v1/context/preview", json={
        "operation": "editor-review", "request": {**seed_example(), "chapter_to_review": "Hi."}})
    assert response.status_code == 200
    body = response.json()
    assert body["prompt"].startswith("<|im_start|>system")
    assert "Hero enters forest" in body["prompt"]
    assert body["context_metadata"]["agent"] == "editor"
    assert fake.calls == []


def test_tokens_count_and_validate(client):
    single = client.post("/api/v1/tokens/count", json={"text": "Hello there, world"}).json()
    assert single["tokens"] == 4
    many = client.post("/api/v1/tokens/count", json={"texts": ["a b", "c"]}).json()
    assert many["counts"] == [2, 1] and many["total_tokens"] == 3
    check = client.post("/api/v1/tokens/validate", json={"text": "a b c", "budget_tokens": 2})
    assert check.json()["fits"] is False


def test_health_reports_loading_and_generation_waits(settings):
    app = create_app(settings)  # no lifespan run: the model never starts loading
    client = TestClient(app)
    assert client.get("/health").json()["model_status"] == "loading"
    response = client.post("/api/v1/generate-chapter", json=seed_example())
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "loading" in response.json()["error"]["message"]


def test_health_reports_load_error(tmp_path, settings):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a model at all, just text" * 10)
    with TestClient(create_app(settings.replace(model_path=bogus))) as client:
        import time
        for _ in range(100):
            health = client.get("/health").json()
            if health["model_status"] != "loading":
                break
            time.sleep(0.05)
        assert health["model_status"] == "error"
        assert "not a GGUF" in health["error"]
        response = client.post("/api/v1/generate-chapter", json=seed_example())
        assert response.status_code == 503
        assert "failed to load" in response.json()["error"]["message"]
