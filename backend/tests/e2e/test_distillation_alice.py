"""The whole of Alice as the story so far, chapter 13 on the embedded model (slow: minutes).

Cold, every older chapter is summarized with the model; the repeat is served from the summary
cache. Times are reported by the benchmark (bench/bench_distillation.py), not asserted here.
"""

import pytest

pytestmark = [pytest.mark.model, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    """A server of its own whose shared block is planned against a 740-token completion
    reserve (the largest agent default before the writer's became 2,000): then chapter 12
    (2,962 tokens) still fits verbatim beside the summaries of chapters 1-11, which is what
    this test follows."""
    import httpx

    from app.config import Settings
    from app.main import create_app
    from tests.conftest import serve

    state = tmp_path_factory.mktemp("alice-all")
    settings = Settings(summary_cache_dir=state / "summaries", archive_enabled=False,
                        context_completion_reserve_tokens=740,
                        generation_timeout_s=3000)  # cold: eleven summaries on 2 cores
    with serve(create_app(settings)) as base, httpx.Client(base_url=base,
                                                          timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def all_of_alice():
    from alice_context import build_request

    body = build_request(chapters=12)
    body["max_tokens"] = 48
    return body


def test_all_of_alice_is_distilled_then_served_from_cache(http, all_of_alice):
    # cold, eleven chapters are summarized at 20-40 s each on 2 cores: a long client timeout
    first = http.post("/api/v1/generate-chapter", json=all_of_alice, timeout=3000)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["chapter_number"] == 13
    report = body["context_metadata"]
    assert report["prompt_tokens"] + report["max_tokens"] <= report["n_ctx"] == 8192
    chapters = [e for e in report["elements"] if e["kind"] == "chapter"]
    assert sum(e["tokens"] for e in chapters) > 35_000  # the whole book went in
    assert chapters[-1]["fate"] == "kept"  # the newest chapter verbatim
    distilled = [e for e in chapters if e["fate"] == "distilled"]
    assert len(distilled) >= 9
    summaries = {s["id"]: s for s in report["summaries"]}
    for element in distilled:
        summary = summaries[element["distilled_into"]]
        assert element["id"] in {src["element_id"] for src in summary["sources"]}
        assert summary["tokens"] <= summary["target_tokens"]
    assert not [e for e in report["elements"] if e["fate"] == "dropped"]
    assert report["distillation"]["llm_calls"] >= len(distilled)

    again = http.post("/api/v1/generate-chapter", json=all_of_alice, timeout=600)
    assert again.status_code == 200
    repeat = again.json()["context_metadata"]
    assert repeat["distillation"]["llm_calls"] == 0
    assert repeat["distillation"]["cache_hits"] == len(report["summaries"])
    assert repeat["prompt_tokens"] == report["prompt_tokens"]
