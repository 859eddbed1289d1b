"""The chapter pipeline through HTTP on the fake generator: when it stops, which suggestions
the revision applies, a failure after the first draft, a client that leaves."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from app.errors import GenerationFailed
from app.llm.fake import FakeGenerator
from app.llm.protocol import ChatMessage, SamplingParams
from app.main import create_app
from tests.conftest import seed_example

PATH = "/api/v1/chapter-pipeline"
DRAFT = "Chapter 1: The Forest\n\nAria walked into the forest. The trees were tall and dark."
REVISED = ("Chapter 1: The Forest\n\nAria heard the wind before she saw the trees, tall and "
           "dark above her.")
REVIEW = json.dumps({"suggestions": [
    {"issue": "Flat opening", "suggestion": "Open with a sound.", "priority": "high"},
    {"issue": "Vague trees", "suggestion": "Name the tree species.", "priority": "low"}]})


def rating(score: int) -> str:
    return json.dumps({"score": score, "opinion": "It reads well enough.",
                       "suggestions": ["Add the smell of pine."]})


class Team:
    """Scripted answers by role: drafts in order, the editor's review, the raters' scores in
    order (the last repeats); ``fail_revision`` makes the writer's revision fail."""

    def __init__(self, scores: Sequence[int], fail_revision: bool = False) -> None:
        self.scores = list(scores)
        self.rated = 0
        self.fail_revision = fail_revision
        self.tasks: list[str] = []

    def __call__(self, messages: Sequence[ChatMessage], params: SamplingParams) -> str:
        task = messages[-1].content
        self.tasks.append(task)
        if "You are the editor." in task:
            return REVIEW
        if "You are the rater." in task:
            score = self.scores[min(self.rated, len(self.scores) - 1)]
            self.rated += 1
            return rating(score)
        if "Revise" in task:
            if self.fail_revision:
                raise GenerationFailed("the fake model failed in the revision")
            return REVISED
        return DRAFT


def client_for(settings, team: Team, **kw) -> TestClient:
    return TestClient(create_app(settings, generator=FakeGenerator(replies=[team], **kw)))


def body(**fields) -> dict:
    return {**seed_example(), "title": "The Forest", **fields}


def test_stops_once_the_mean_score_reaches_min_score(settings):
    team = Team(scores=[9, 8])
    with client_for(settings, team) as client:
        answer = client.post(PATH, json=body(
            min_score=8, max_rounds=3,
            raters=[{"name": "reader", "criteria": ["pace"]},
                    {"name": "critic", "criteria": ["style"]}]))
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["stopped_because"] == "min_score"
    assert [d["round"] for d in record["drafts"]] == [1]
    draft = record["drafts"][0]
    assert [s["score"] for s in draft["scores"]] == [9, 8] and draft["mean_score"] == 8.5
    assert draft["best"] and record["best_round"] == 1 and record["chapter_text"] == DRAFT
    assert [c["phase"] for c in record["calls"]] == ["draft", "review", "rate", "rate"]
    assert set(record["usage_by_agent"]) == {"writer", "editor", "rater"}
    assert record["usage"]["total_tokens"] == sum(c["usage"]["total_tokens"]
                                                  for c in record["calls"])
    assert record["context_metadata"]["agent"] == "writer"


def test_revises_until_max_rounds_and_marks_the_best_draft(settings):
    team = Team(scores=[4, 7, 6])
    with client_for(settings, team) as client:
        record = client.post(PATH, json=body(min_score=9, max_rounds=3)).json()
    assert record["stopped_because"] == "max_rounds"
    assert [d["round"] for d in record["drafts"]] == [1, 2, 3]
    assert [d["mean_score"] for d in record["drafts"]] == [4, 7, 6]
    assert [d["best"] for d in record["drafts"]] == [False, True, False]
    assert record["best_round"] == 2 and record["chapter_text"] == REVISED
    assert [c["phase"] for c in record["calls"]] == [
        "draft", "review", "rate", "revise", "review", "rate", "revise", "review", "rate"]
    # the last draft's suggestions were not sent anywhere
    assert not any(s["applied"] for s in record["drafts"][2]["suggestions"])
    assert all(s["applied"] for s in record["drafts"][0]["suggestions"])


def test_min_priority_selects_the_suggestions_applied(settings):
    team = Team(scores=[3])
    with client_for(settings, team) as client:
        record = client.post(PATH, json=body(max_rounds=2, min_priority="medium")).json()
    first = record["drafts"][0]["suggestions"]
    applied = {s["suggestion"]: s["applied"] for s in first}
    assert applied == {"Open with a sound.": True, "Name the tree species.": False,
                       "Add the smell of pine.": True}  # a rater's counts as medium
    revision = next(t for t in team.tasks if "Revise" in t)
    assert "Open with a sound." in revision and "Add the smell of pine." in revision
    assert "Name the tree species." not in revision


def test_a_failure_in_round_two_returns_round_one_draft(settings):
    team = Team(scores=[3], fail_revision=True)
    with client_for(settings, team) as client:
        answer = client.post(PATH, json=body(max_rounds=3))
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["stopped_because"] == "error"
    assert record["error"]["code"] == "generation_failed"
    assert [d["text"] for d in record["drafts"]] == [DRAFT]
    assert record["chapter_text"] == DRAFT and record["best_round"] == 1


def test_a_failure_of_the_first_draft_is_an_error_answer(settings):
    with TestClient(create_app(settings, generator=FakeGenerator(
            replies=[DRAFT], fail_after=2))) as client:
        answer = client.post(PATH, json=body())
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "generation_failed"


def test_the_stream_says_where_it_is(settings):
    team = Team(scores=[4, 9])
    with client_for(settings, team) as client, connect_sse(
            client, "POST", f"{PATH}/stream", json=body(max_rounds=2)) as source:
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and "error" not in names
    phases = [(d["round"], d["phase"]) for n, d in events if n == "phase"]
    assert phases == [(1, "draft"), (1, "review"), (1, "rate"),
                      (2, "revise"), (2, "review"), (2, "rate")]
    round_one = "".join(d["text"] for n, d in events if n == "token" and d["round"] == 1)
    assert round_one.strip() == DRAFT
    assert [d["score"] for n, d in events if n == "score"] == [4, 9]
    assert sum(1 for n, _ in events if n == "suggestion") == 6
    drafts = [d["text"] for n, d in events if n == "draft"]
    assert drafts == [DRAFT, REVISED]
    assert events[-1][1]["stopped_because"] == "min_score"


def test_a_stream_closed_mid_revision_stops_within_a_token(settings):
    team = Team(scores=[2])
    long_revision = "Chapter 1: The Forest\n\n" + " ".join(["word"] * 400)
    generator = FakeGenerator(replies=[team], token_delay_s=0.005)

    def reply(messages: Sequence[ChatMessage], params: SamplingParams) -> str:
        text = team(messages, params)
        return long_revision if text == REVISED else text

    generator.replies = [reply]
    with TestClient(create_app(settings, generator=generator)) as client, connect_sse(
            client, "POST", f"{PATH}/stream", json=body(max_rounds=3)) as source:
        for event in source.iter_sse():
            if event.event == "token" and json.loads(event.data)["round"] == 2:
                break
    calls = len(generator.produced)
    assert calls == 4  # draft, review, rate, the revision it left
    assert generator.produced[-1] < 50, generator.produced


@pytest.mark.parametrize("field", [{"max_rounds": 0}, {"max_rounds": 9}, {"min_score": 11},
                                   {"raters": []}, {"min_priority": "urgent"}])
def test_bad_pipeline_fields_are_422(settings, field):
    with client_for(settings, Team(scores=[5])) as client:
        answer = client.post(PATH, json=body(**field))
    assert answer.status_code == 422
    assert next(iter(field)) in answer.text


def test_the_draft_stands_in_the_shared_block_of_the_editor_raters_and_reviser(settings):
    """After the draft, every call's shared block is the story with the draft as its chapter,
    byte for byte, so the KV state of the draft is processed once per draft, not per agent."""
    team = Team(scores=[3])
    generator = FakeGenerator(replies=[team])
    with TestClient(create_app(settings, generator=generator)) as client:
        record = client.post(PATH, json=body(max_rounds=2)).json()
    assert [c["phase"] for c in record["calls"]][:4] == ["draft", "review", "rate", "revise"]

    def shared(call: int) -> list[str]:
        messages, _ = generator.calls[call]
        prefix = generator.prefixes[call]
        assert prefix is not None
        return [m.content for m in messages[:prefix.messages]]

    assert DRAFT not in "".join(shared(0))
    assert DRAFT in "".join(shared(1))
    assert shared(1) == shared(2) == shared(3)
    for call in (1, 2, 3):
        task = generator.calls[call][0][-1].content
        assert "chapter 1 as it stands above" in task and DRAFT not in task


@pytest.mark.parametrize("fields", [{}, {"plot_point": "A wolf.", "chapter_number": 1}])
def test_the_rater_takes_exactly_one_of_plot_point_or_chapter_number(settings, fields):
    with client_for(settings, Team(scores=[5])) as client:
        answer = client.post("/api/v1/rater-feedback", json={**seed_example(), **fields})
    assert answer.status_code == 422 and "plot_point or chapter_number" in answer.text


def test_without_min_score_every_round_runs(settings):
    team = Team(scores=[10])
    with client_for(settings, team) as client:
        record = client.post(PATH, json=body(max_rounds=2, min_score=None)).json()
    assert record["stopped_because"] == "max_rounds"
    assert [d["mean_score"] for d in record["drafts"]] == [10, 10]


def test_a_run_is_recorded_with_its_calls_and_replays_with_its_seed(settings):
    """The run's record names its calls' records; the editor's and raters' seeds derive from
    the run's, so a replay of a stored request makes the same calls with the same seeds."""
    team = Team(scores=[6])
    generator = FakeGenerator(replies=[team])
    with TestClient(create_app(settings, generator=generator)) as client:
        answer = client.post(PATH, json=body(max_rounds=2, min_score=None, store_request=True))
        assert answer.status_code == 200, answer.text
        run = answer.json()
        record = client.get(f"/api/v1/generations/{run['generation_id']}").json()
        assert record["kind"] == "pipeline" and record["sampling"]["seed"] == run["seed"]
        assert record["children"] == [call["generation_id"] for call in run["calls"]]
        assert record["text"] == run["chapter_text"] and record["request"] is not None
        first_seeds = [params.seed for _, params in generator.calls]
        # draft and revision use the run's seed; the editor and rater seeds derive from it
        assert len(first_seeds) == 6 and first_seeds[0] == first_seeds[3] == run["seed"]
        assert len({first_seeds[0], first_seeds[1], first_seeds[2]}) == 3
        replayed = client.post(f"/api/v1/generations/{run['generation_id']}/replay")
        assert replayed.status_code == 200, replayed.text
        out = replayed.json()
        assert out["identical"] is True and out["model_identical"] is True
        assert [params.seed for _, params in generator.calls[6:]] == first_seeds
        again = client.get(f"/api/v1/generations/{out['generation_id']}").json()
        assert again["replay_of"] == run["generation_id"] and again["kind"] == "pipeline"
