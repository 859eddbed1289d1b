"""The team end to end over real HTTP on the real embedded model: the chapter pipeline on
Alice with two rounds, variants with their scores, and the author's voice (Sherlock Holmes
stories tagged as the voice, told apart from Carroll's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from httpx_sse import connect_sse

pytestmark = pytest.mark.model

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus"
DOYLE = CORPUS / "doyle-adventures-of-sherlock-holmes.txt"
CARROLL = CORPUS / "carroll-alice.txt"


def test_the_pipeline_on_alice_with_two_rounds(http, alice_request):
    body = {**alice_request, "max_tokens": 120, "temperature": 0, "seed": 1,
            "max_rounds": 2, "min_score": None,
            "raters": [{"name": "young reader", "criteria": ["fun", "clarity"]}]}
    answer = http.post("/api/v1/chapter-pipeline", json=body)
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["stopped_because"] == "max_rounds", record.get("error")
    phases = [c["phase"] for c in record["calls"]]
    assert phases == ["draft", "review", "rate", "revise", "review", "rate"]
    assert len(record["drafts"]) == 2
    assert any(s["applied"] for s in record["drafts"][0]["suggestions"])
    # the writer's first draft is a chapter; a revision by this small model may echo the
    # suggestions instead (seen once in a full run), so only its presence is checked
    assert len(record["drafts"][0]["text"].split()) > 20
    for draft in record["drafts"]:
        assert draft["text"]
        assert draft["scores"] and 1 <= draft["mean_score"] <= 10
    assert sum(d["best"] for d in record["drafts"]) == 1
    # every call after the first reuses the story's prefix from the KV state cache
    cached = [c["usage"]["prompt_tokens_details"]["cached_tokens"] for c in record["calls"]]
    assert all(tokens > 1000 for tokens in cached[1:]), cached
    assert record["usage_by_agent"]["writer"]["completion_tokens"] > 0


def test_the_pipeline_streams_its_phases(http, alice_request):
    body = {**alice_request, "max_tokens": 60, "temperature": 0, "seed": 2,
            "max_rounds": 1}
    with connect_sse(http, "POST", "/api/v1/chapter-pipeline/stream", json=body) as source:
        assert source.response.status_code == 200
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    names = [name for name, _ in events]
    assert names[-1] == "done" and "error" not in names
    assert [d["phase"] for n, d in events if n == "phase"] == ["draft", "review", "rate"]
    assert names.count("token") >= 2 and names.count("score") == 1
    assert events[-1][1]["drafts"][0]["text"]


def test_variants_come_back_scored_and_ranked(http, alice_request):
    body = {**alice_request, "max_tokens": 80, "n": 2, "seed": 5, "target_words": 60}
    answer = http.post("/api/v1/generate-chapter", json=body)
    assert answer.status_code == 200, answer.text
    variants = answer.json()["variants"]
    assert [v["rank"] for v in variants] == [1, 2]
    assert sorted(v["seed"] for v in variants) == [5, 6]
    for variant in variants:
        scores = variant["scores"]
        assert 0 <= scores["novelty_ngram"] <= 1 and 0 <= scores["length_fit"] <= 1
        assert scores["novelty"] <= scores["novelty_ngram"]
        assert variant["text"]
    assert variants[0]["scores"]["overall"] >= variants[1]["scores"]["overall"]
    assert answer.json()["chapter_text"] == variants[0]["text"]
