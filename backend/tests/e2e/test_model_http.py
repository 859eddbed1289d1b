"""End to end over real HTTP (uvicorn on loopback) on the real embedded GGUF model.

Generations are kept short (small max_tokens). The Alice tests share one story, so after the
first call every agent reuses the story prefix already in the KV cache.
"""

import json
import time

import pytest
from httpx_sse import connect_sse

from tests.conftest import seed_example

pytestmark = pytest.mark.model


def stream_events(http, path, body):
    with connect_sse(http, "POST", path, json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def check_stream(events):
    names = [name for name, _ in events]
    assert names[0] == "meta"
    assert names[-1] == "done" and names.count("done") == 1 and "error" not in names
    tokens = [data["text"] for name, data in events if name == "token"]
    assert len(tokens) >= 2, "tokens must arrive one by one, not as one blob"
    done = events[-1][1]
    if done["attempts"] == 1 and not done["quality"]["repairs"]:
        # one attempt, nothing cut: the answer is exactly what was streamed
        assert done["text"] == "".join(tokens).strip()
        assert done["usage"]["completion_tokens"] >= len(tokens) - 1
    else:  # each further attempt was announced before its tokens
        retries = [data for name, data in events if name == "progress"
                   and data.get("stage") in ("repair", "retry")]
        assert len(retries) == done["attempts"] - 1
    assert done["timings"]["time_to_first_token_ms"] > 0
    return done


def test_health_reports_the_embedded_model(http):
    health = http.get("/health").json()
    assert health == {"status": "ok", "model_status": "ready",
                      "model": "SmolLM2-135M-Instruct.Q4_1", "n_ctx": 8192, "error": None}


def test_seed_example_verbatim_generates_a_chapter(http):
    response = http.post("/api/v1/generate-chapter", json=seed_example(),
                         params=None)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["chapter_text"].split()) > 5
    assert body["usage"]["completion_tokens"] > 0
    report = body["context_metadata"]
    assert report["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert all(e["fate"] == "kept" for e in report["elements"])


def test_seed_example_streams_token_by_token(http):
    events = stream_events(http, "/api/v1/generate-chapter/stream",
                           {**seed_example(), "max_tokens": 48})
    done = check_stream(events)
    assert done["usage"]["completion_tokens"] <= 48


def test_real_token_counts(http):
    body = http.post("/api/v1/tokens/count", json={"texts": ["Hello world", ""]}).json()
    assert body["counts"] == [2, 0]
    assert body["model"] == "SmolLM2-135M-Instruct.Q4_1"


def test_alice_example_generates_and_streams_chapter_two(http, alice_request):
    response = http.post("/api/v1/generate-chapter", json=alice_request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["chapter_number"] == 2 and body["title"] == "The Pool of Tears"
    assert len(body["chapter_text"].split()) > 20
    report = body["context_metadata"]
    chapter = next(e for e in report["elements"] if e["id"] == "chapters[0]")
    assert chapter["tokens"] > 2000 and chapter["fate"] == "kept"
    assert report["prompt_tokens"] + report["max_tokens"] <= report["n_ctx"]

    events = stream_events(http, "/api/v1/generate-chapter/stream", alice_request)
    check_stream(events)
    assert events[0][1]["context_metadata"]["prompt_tokens"] == report["prompt_tokens"]


def alice(alice_request, **fields):
    body = {"structured_context": alice_request["structured_context"], **fields}
    return body


JSON_AGENTS = [
    ("editor-review", {"chapter_to_review": "Alice grew and grew. Then she cried a lake.",
                       "max_tokens": 700}, "suggestions"),
    ("character-feedback", {"character_name": "Alice",
                            "plot_point": "The White Rabbit drops his gloves and fan."},
     "emotions"),
    ("rater-feedback", {"plot_point": "Alice cries a pool of tears and swims in it."}, "score"),
    ("generate-character-details", {"character_name": "The Dodo",
                                    "basic_bio": "A solemn bird who runs caucus-races."},
     "details"),
    ("generate-chapter-outlines", {"number_of_chapters": 2}, "outlines"),
]
TEXT_AGENTS = [
    ("modify-chapter", {"current_chapter": "Alice sat by the pool and cried.",
                        "user_request": "Make it funnier.", "max_tokens": 60},
     "modified_chapter"),
    ("flesh-out", {"text_to_flesh_out": "Alice shrinks. The Mouse swims by.",
                   "max_tokens": 60}, "fleshed_out_text"),
    ("regenerate-bio", {"character_name": "white_rabbit", "max_tokens": 60}, "bio"),
    ("llm-chat", {"messages": [{"role": "user", "content": "Who is the White Rabbit?"}],
                  "max_tokens": 40}, "message"),
]


@pytest.mark.parametrize(("operation", "fields", "key"), JSON_AGENTS + TEXT_AGENTS,
                         ids=[c[0] for c in JSON_AGENTS + TEXT_AGENTS])
def test_every_agent_answers_on_alice(http, alice_request, operation, fields, key):
    response = http.post(f"/api/v1/{operation}", json=alice(alice_request, **fields))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body[key]
    assert body["context_metadata"]["agent"] in {"writer", "editor", "character", "rater",
                                                 "assistant"}
    assert body["usage"]["prompt_tokens"] + body["context_metadata"]["max_tokens"] <= 8192


def test_modify_and_flesh_out_stream(http, alice_request):
    for operation, fields, _ in TEXT_AGENTS[:2]:
        check_stream(stream_events(http, f"/api/v1/{operation}/stream",
                                   alice(alice_request, **fields)))


def test_editor_review_of_chapter_one_refers_to_it_where_it_stands(http, alice_request):
    review = http.post("/api/v1/context/preview", json={
        "operation": "editor-review", "request": alice(alice_request, chapter_number=1)}).json()
    writer = http.post("/api/v1/context/preview", json={
        "operation": "generate-chapter", "request": alice_request}).json()
    chapter = next(e for e in review["context_metadata"]["elements"] if e["id"] == "chapters[0]")
    assert chapter["fate"] == "kept"
    shared, task = review["prompt"].split("<|im_start|>user", 1)
    assert "Down the Rabbit-Hole" in shared and "chapter 1 as it stands above" in task
    # the writer's prompt starts with the same shared block, byte for byte
    assert writer["prompt"].startswith(shared)
    assert (review["context_metadata"]["shared_prefix_tokens"]
            == writer["context_metadata"]["shared_prefix_tokens"])


def test_context_too_large_for_the_window_is_400_not_a_crash(http, alice_request):
    body = alice(alice_request, max_tokens=4000)
    # high-priority content may not be trimmed, dropped or distilled: chapter 1 as such an
    # element (2,800 tokens) twice, with 4,000 completion tokens, cannot fit 8,192
    text = alice_request["structured_context"]["chapters"][0]["content"]
    body["structured_context"]["plot_elements"] = [
        {"type": "world", "content": text, "priority": "high"},
        {"type": "backstory", "content": text, "priority": "high"}]
    response = http.post("/api/v1/generate-chapter", json=body)
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert details["available_tokens"] == 8192 and details["needed_tokens"] > 8192


STREAMED = [
    ("generate-chapter", {"max_tokens": 40}),
    *[(operation, fields) for operation, fields, _ in JSON_AGENTS],
    *[(operation, fields) for operation, fields, _ in TEXT_AGENTS],
]


@pytest.mark.parametrize(("operation", "fields"), STREAMED, ids=[c[0] for c in STREAMED])
def test_every_stream_twin_sends_meta_tokens_and_one_done(http, alice_request, operation,
                                                         fields):
    events = stream_events(http, f"/api/v1/{operation}/stream", alice(alice_request, **fields))
    done = check_stream(events)
    if operation in {op for op, _, _ in JSON_AGENTS}:
        assert isinstance(done["output"], dict) and done["output"]
    assert set(done["quality"]) == {"useful", "problems", "repairs"}


@pytest.mark.parametrize("path", ["/api/v1/archive/rag/query/stream", "/api/v1/archive/rag/chat"])
def test_the_archivists_streams_send_meta_tokens_and_one_done(http, path):
    for _ in range(120):  # the archive loads its embedding model in the background
        if http.get("/api/v1/archive/stats").status_code == 200:
            break
        time.sleep(0.5)
    question = "Who is the White Rabbit?"
    body = ({"question": question, "max_tokens": 40} if path.endswith("query/stream") else
            {"messages": [{"role": "user", "content": question}], "max_tokens": 40})
    events = stream_events(http, path, body)
    done = check_stream(events)
    assert "sources" in events[0][1] and "cited" in done
