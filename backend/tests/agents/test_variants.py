"""Variants (n > 1) through HTTP on the fake generator, and their scores."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from app.agents.variants import Scorer, length_fit, ngram_containment, passages
from app.llm.fake import FakeGenerator
from app.llm.protocol import ChatMessage, SamplingParams
from app.main import create_app
from tests.conftest import seed_example

CHAPTER_ONE = ("Aria walked into the forest at dawn. The trees were tall and the path was "
               "narrow, and somewhere ahead a river ran over stones.")


def story(**fields) -> dict:
    body = seed_example()
    body["structured_context"]["chapters"] = [
        {"number": 1, "title": "Dawn", "content": CHAPTER_ONE}]
    return {**body, **fields}


def words_reply(count: int, word: str = "leaf") -> str:
    """A chapter of ``count`` distinct words (a repeated word would be cut as a loop)."""
    return "Chapter 2: Night\n\n" + " ".join(f"{word}{i}" for i in range(count)) + "."


def by_seed(replies: dict[int, str]):
    def reply(messages: Sequence[ChatMessage], params: SamplingParams) -> str:
        if "You are the rater." in messages[-1].content:
            return json.dumps({"score": 6, "opinion": "Fine.", "suggestions": []})
        return replies[params.seed]
    return reply


def test_ngram_containment_and_length_fit():
    assert ngram_containment(CHAPTER_ONE, CHAPTER_ONE) == 1.0
    assert ngram_containment("the cat sat on a mat", CHAPTER_ONE) == 0.0
    assert ngram_containment("Aria walked into the night", CHAPTER_ONE) == pytest.approx(2 / 3)
    assert length_fit("one two three four", 4) == 1.0
    assert length_fit("one two", 4) == 0.5
    assert length_fit(" ".join(["w"] * 20), 4) == 0.0
    assert length_fit("anything", None) is None
    assert passages(" ".join(["w"] * 310), 150) == [" ".join(["w"] * 150)] * 2 + ["w " * 9 + "w"]


def test_scorer_measures_style_against_the_voice_and_novelty_against_the_story():
    vectors = {"storm": np.array([1.0, 0.0]), "calm": np.array([0.0, 1.0])}

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.stack([vectors["storm" if "storm" in t else "calm"] for t in texts])

    scorer = Scorer(story=["a calm sea under a calm sky"], embed=embed,
                    voice=np.array([1.0, 0.0]))
    stormy = scorer.score("the storm broke over the hills", None)
    calm = scorer.score("a calm sea under a calm sky", None)
    assert stormy.style_similarity == 1.0 and calm.style_similarity == 0.0
    assert stormy.novelty_embedding == 1.0 and calm.novelty_embedding == 0.0
    assert calm.novelty_ngram == 0.0 and calm.novelty == 0.0
    assert stormy.overall > calm.overall


def test_variants_are_scored_and_ranked(settings):
    replies = {7: words_reply(10), 8: words_reply(48), 9: "Chapter 2: Night\n\n" + CHAPTER_ONE}
    generator = FakeGenerator(replies=[by_seed(replies)])
    with TestClient(create_app(settings, generator=generator)) as client:
        answer = client.post("/api/v1/generate-chapter",
                             json=story(n=3, seed=7, target_words=50))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    variants = body["variants"]
    assert [v["seed"] for v in variants] == [8, 7, 9]  # ranked
    assert [v["rank"] for v in variants] == [1, 2, 3]
    assert body["chapter_text"] == variants[0]["text"] == replies[8]
    copied = variants[2]["scores"]
    assert copied["novelty_ngram"] < 0.2 and copied["style_similarity"] is None
    assert variants[0]["scores"]["length_fit"] > variants[1]["scores"]["length_fit"]
    overall = [v["scores"]["overall"] for v in variants]
    assert overall == sorted(overall, reverse=True)
    assert [p.seed for _, p in generator.calls] == [7, 8, 9]


def test_variants_stream_one_after_another_and_can_be_rated(settings):
    replies = {3: words_reply(20, "rain"), 4: words_reply(20, "snow")}
    generator = FakeGenerator(replies=[by_seed(replies)])
    with TestClient(create_app(settings, generator=generator)) as client, connect_sse(
            client, "POST", "/api/v1/flesh-out/stream",
            json=story(n=2, seed=3, rate_variants=True, text_to_flesh_out="Night falls.")
    ) as source:
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and names.count("meta") == 1
    assert names.count("variant") == 2
    first_done = names.index("variant")
    assert {d["variant"] for n, d in events[:first_done] if n == "token"} == {0}
    assert {d["variant"] for n, d in events[first_done:] if n == "token"} == {1}
    done = events[-1][1]
    assert [v["scores"]["rater_score"] for v in done["variants"]] == [6, 6]
    assert done["text"] == done["variants"][0]["text"]


@pytest.mark.parametrize("n", [0, 5])
def test_n_out_of_range_is_422(settings, n):
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        answer = client.post("/api/v1/generate-chapter", json=story(n=n))
    assert answer.status_code == 422 and "n" in answer.text
