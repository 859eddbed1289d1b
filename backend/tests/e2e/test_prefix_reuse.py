"""One story, many agents, on the real embedded model over HTTP: the story's shared block is
processed once and its KV state reused, across agents, stories and restarts of the KV cache,
never across tenants, and never changing what the model writes.

Stories are cut short (about 1,000 prompt tokens) to keep the suite fast; the benchmark
(``bench/bench_agents.py``) runs the full-length sequence.
"""

import re

import httpx
import pytest
from alice_context import build_request

from app.config import Settings
from app.main import create_app
from tests.conftest import serve

pytestmark = pytest.mark.model

#: Characters of each chapter kept (about 350 tokens each).
CHAPTER_CHARS = 1_500


def story(first_chapter: int) -> dict:
    """Two short consecutive Alice chapters from ``first_chapter`` with the template's
    characters and plot: a story context of about 1,000 prompt tokens."""
    body = build_request(chapters=first_chapter + 1)
    chapters = body["structured_context"]["chapters"][first_chapter - 1:]
    for chapter in chapters:
        chapter["content"] = chapter["content"][:CHAPTER_CHARS]
    body["structured_context"]["chapters"] = chapters
    return body


# Every request generates ("cache": false): these tests are about the KV state the model
# reuses, which an answer from the response cache would skip.
def writer(body: dict) -> dict:
    return {**body, "chapter_number": None, "title": None, "plot_point": "Alice meets a Mouse.",
            "max_tokens": 12, "temperature": 0, "seed": 1, "cache": False}


def chat(body: dict, question: str) -> dict:
    return {"structured_context": body["structured_context"], "max_tokens": 12,
            "temperature": 0, "seed": 1, "cache": False,
            "messages": [{"role": "user", "content": question}]}


def cached(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def metric(http: httpx.Client, name: str) -> float:
    text = http.get("/metrics").text
    match = re.search(rf"^writer_assistant_{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_editor_review_by_number_after_the_writer_reuses_the_story(http):
    body = story(3)
    first = http.post("/api/v1/generate-chapter", json=writer(body))
    assert first.status_code == 200, first.text
    shared = first.json()["context_metadata"]["shared_prefix_tokens"]
    review = http.post("/api/v1/editor-review", json={
        "structured_context": body["structured_context"], "chapter_number": 4,
        "temperature": 0, "seed": 1, "max_tokens": 400})
    reused = cached(review)
    report = review.json()["context_metadata"]
    assert report["shared_prefix_tokens"] == shared > 500
    assert report["shared_block_note"] is None
    chapter = next(e for e in report["elements"] if e["id"] == "chapters[1]")
    assert chapter["fate"] == "kept"  # reviewed where it stands, not moved into the task
    assert reused >= 0.9 * review.json()["usage"]["prompt_tokens"]


def test_interleaved_stories_keep_their_warm_state(http):
    a, b = story(5), story(7)
    restores = metric(http, "prefix_cache_restores_total")
    for body in (a, b):  # cold: only what every Alice story shares (plot, characters) is warm
        first = http.post("/api/v1/generate-chapter", json=writer(body))
        assert cached(first) < 0.6 * first.json()["usage"]["prompt_tokens"]
    for body, question in ((a, "Where is Alice now?"), (b, "Who is with Alice?")):
        answer = http.post("/api/v1/llm-chat", json=chat(body, question))
        assert cached(answer) >= 0.9 * answer.json()["usage"]["prompt_tokens"]
    assert metric(http, "prefix_cache_restores_total") >= restores + 2


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory):
    state = tmp_path_factory.mktemp("tenants")
    settings = Settings(summary_cache_dir=state / "summaries", archive_enabled=False,
                        api_keys="alice:alice-key-0123456789,bob:bob-key-0123456789abc")
    with serve(create_app(settings)) as base:
        yield base


def test_a_tenant_never_receives_another_tenants_state(two_tenants):
    body = writer(story(9))
    with httpx.Client(base_url=two_tenants, timeout=300) as http:
        alice = {"Authorization": "Bearer alice-key-0123456789"}
        bob = {"Authorization": "Bearer bob-key-0123456789abc"}
        assert cached(http.post("/api/v1/generate-chapter", json=body, headers=alice)) == 0
        # the same story, byte for byte, from another tenant: neither the live KV cache nor
        # alice's snapshot is offered
        assert cached(http.post("/api/v1/generate-chapter", json=body, headers=bob)) == 0
        again = http.post("/api/v1/generate-chapter", json=body, headers=alice)
        assert cached(again) >= 0.9 * again.json()["usage"]["prompt_tokens"]


def run_sequence(settings: Settings) -> list[tuple[str, int]]:
    """Writer on story A, writer on story B, chat on A: texts and cached tokens, greedy."""
    a, b = story(3), story(5)
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=300) as http:
        answers = [http.post("/api/v1/generate-chapter", json=writer(a)),
                   http.post("/api/v1/generate-chapter", json=writer(b)),
                   http.post("/api/v1/llm-chat", json=chat(a, "What did Alice eat?"))]
    texts = []
    for answer in answers:
        reused = cached(answer)
        body = answer.json()
        texts.append((body.get("chapter_text") or body["message"]["content"], reused))
    return texts


def test_the_cache_and_its_evictions_change_no_output(tmp_path):
    """Greedy output is the same with the cache on, evicting everything (a one-byte budget)
    and off: restoring a snapshot gives the model exactly the state it would compute."""
    base = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False)
    on = run_sequence(base)
    evicting = run_sequence(base.replace(prefix_cache_ram_bytes=1))
    off = run_sequence(base.replace(prefix_cache_enabled=False))
    assert [text for text, _ in on] == [text for text, _ in evicting] == [
        text for text, _ in off]
    prompt_tokens = 1_000
    assert on[2][1] > 0.6 * prompt_tokens  # story A's state came back from its snapshot
    # evicted, or never kept: only what the two stories share (plot, characters) was live
    assert evicting[2][1] < 0.6 * prompt_tokens and off[2][1] < 0.6 * prompt_tokens
