"""Feedback through HTTP on the fake generator: stored per story and tenant, listed, a note
carried into the story's next prose request once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example

NOTE = "Less fog, more dialogue between Aria and the wolf."


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator(replies=["Chapter 2: Night\n\nAria waited by the river until dark."])


@pytest.fixture
def client(fake, settings, tmp_path):
    settings = settings.replace(feedback_db_path=tmp_path / "feedback.sqlite3")
    with TestClient(create_app(settings, generator=fake)) as test_client:
        yield test_client


def prompt_text(fake: FakeGenerator, call: int = -1) -> str:
    return "\n".join(m.content for m in fake.calls[call][0])


def test_feedback_is_stored_and_listed_by_story(client):
    first = client.post("/api/v1/feedback", json={
        "story_id": "aria", "operation": "generate-chapter", "chosen": "Aria ran.",
        "rejected": ["Aria walked.", "Aria sat."], "rating": 8, "note": "Keep it brisk."})
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["rejected"] == ["Aria walked.", "Aria sat."] and record["rating"] == 8
    assert record["exemplar_file"] is None and "archive" in record["exemplar_note"]
    client.post("/api/v1/feedback", json={"story_id": "other", "rating": 3})
    listed = client.get("/api/v1/feedback", params={"story_id": "aria"}).json()
    assert [r["id"] for r in listed["feedback"]] == [record["id"]]
    assert client.get("/api/v1/feedback", params={"story_id": "none"}).json()["feedback"] == []


def test_a_carried_note_goes_into_the_next_request_once(client, fake):
    body = {**seed_example(), "story_id": "aria"}
    answer = client.post("/api/v1/feedback", json={
        "story_id": "aria", "rejected": ["Fog everywhere."], "note": NOTE, "carry_note": True})
    assert answer.status_code == 201
    client.post("/api/v1/feedback", json={"story_id": "aria", "note": "Not carried."})
    first = client.post("/api/v1/generate-chapter", json=body)
    assert first.status_code == 200, first.text
    assert NOTE in prompt_text(fake) and "Not carried." not in prompt_text(fake)
    kept = [e for e in first.json()["context_metadata"]["elements"]
            if e["kind"] == "user_request" and e["id"].startswith("feedback-note")]
    assert len(kept) == 1
    client.post("/api/v1/generate-chapter", json=body)
    assert NOTE not in prompt_text(fake)  # carried once
    listed = client.get("/api/v1/feedback", params={"story_id": "aria"}).json()["feedback"]
    assert listed[0]["carried_at"] is not None and listed[1]["carried_at"] is None


def test_notes_wait_for_a_request_that_names_the_story(client, fake):
    client.post("/api/v1/feedback", json={"story_id": "aria", "note": NOTE,
                                          "carry_note": True})
    client.post("/api/v1/generate-chapter", json={**seed_example(), "story_id": "other"})
    assert NOTE not in prompt_text(fake)
    client.post("/api/v1/generate-chapter", json=seed_example())
    assert NOTE not in prompt_text(fake)
    client.post("/api/v1/generate-chapter", json={**seed_example(), "story_id": "aria"})
    assert NOTE in prompt_text(fake)


@pytest.mark.parametrize(("body", "field"), [
    ({"story_id": "aria"}, "at least one"),
    ({"story_id": "aria", "rating": 11}, "rating"),
    ({"story_id": "aria", "rating": 5, "carry_note": True}, "carry_note"),
    ({"story_id": "", "rating": 5}, "story_id"),
    ({"story_id": "aria", "rejected": ["x"] * 9}, "rejected"),
])
def test_bad_feedback_is_422(client, body, field):
    answer = client.post("/api/v1/feedback", json=body)
    assert answer.status_code == 422 and field in answer.text


def test_an_unusable_feedback_path_is_503_naming_the_setting(fake, settings):
    settings = settings.replace(feedback_db_path="/proc/nope/feedback.sqlite3")
    with TestClient(create_app(settings, generator=fake)) as client:
        answer = client.post("/api/v1/feedback", json={"story_id": "aria", "rating": 5})
        assert answer.status_code == 503
        assert answer.json()["error"]["param"] == "FEEDBACK_DB_PATH"
        assert "/proc" not in answer.text
        # a prose request naming a story still runs (its notes wait)
        ok = client.post("/api/v1/generate-chapter", json={**seed_example(), "story_id": "a"})
        assert ok.status_code == 200
