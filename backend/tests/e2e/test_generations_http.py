"""Generation records end to end over real HTTP on the real embedded model: a replay is
byte-identical, greedy and with a seed at temperature > 0, even after another story has
taken the KV cache; a repeated seeded request comes from the cache; a streamed answer names
its record."""

import json

import pytest
from httpx_sse import connect_sse

from tests.conftest import seed_example

pytestmark = pytest.mark.model


def _chapter(**extra):
    return {**seed_example(), "max_tokens": 24, **extra}


def _other_story():
    """Another story, so the KV cache holds something else before the replay."""
    body = seed_example()
    body["structured_context"]["plot_elements"][0]["content"] = "A storm hits the harbour town"
    body["structured_context"]["character_contexts"][0]["character_name"] = "Bram"
    return {**body, "max_tokens": 8, "temperature": 0}


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_a_replay_is_byte_identical(http, sampling):
    body = _chapter(**sampling, cache=False)
    first = http.post("/api/v1/generate-chapter", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["generation_id"] and answer["chapter_text"]
    assert http.post("/api/v1/generate-chapter", json=_other_story()).status_code == 200
    replayed = http.post(f"/api/v1/generations/{answer['generation_id']}/replay",
                         json={"request": body})
    assert replayed.status_code == 200, replayed.text
    out = replayed.json()
    assert out["identical"] is True, (out["first_difference"], out["text"],
                                      out["recorded_text"])
    assert out["prompt_identical"] is True and out["model_identical"] is True
    assert out["text"] == answer["chapter_text"]
    record = http.get(f"/api/v1/generations/{answer['generation_id']}").json()
    assert len(record["model"]["sha256"]) == 64
    assert record["model"]["runtime"].startswith("llama-cpp-python")
    assert record["sampling"]["seed"] == answer["seed"]
    if "seed" in sampling:
        assert answer["seed"] == sampling["seed"]


def test_a_repeated_seeded_request_is_a_cache_hit(http):
    body = _chapter(temperature=0.8, seed=99, max_tokens=12)
    first = http.post("/api/v1/generate-chapter", json=body).json()
    again = http.post("/api/v1/generate-chapter", json=body).json()
    assert (first["cache"], again["cache"]) == ("miss", "hit")
    assert again["chapter_text"] == first["chapter_text"]
    assert again["generation_id"] == first["generation_id"]
    assert again["timings"]["total_ms"] < first["timings"]["total_ms"]


def test_a_stream_names_its_record(http):
    with connect_sse(http, "POST", "/api/v1/generate-chapter/stream",
                     json=_chapter(max_tokens=8)) as source:
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    meta = events[0][1]
    done = events[-1][1]
    assert events[0][0] == "meta" and events[-1][0] == "done"
    assert meta["generation_id"] == done["generation_id"] and meta["cache"] == "off"
    record = http.get(f"/api/v1/generations/{done['generation_id']}").json()
    assert record["text"] == done["text"]
