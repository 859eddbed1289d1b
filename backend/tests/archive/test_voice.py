"""The author's voice on a real Chroma and the real embedding model: Sherlock Holmes stories
tagged as the voice, Alice as the story; the profile tells Doyle from Carroll; voice passages
are style exemplars, never story passages; feedback's chosen passage becomes one."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.archive.service import Archive
from app.observability.metrics import Metrics
from app.voice.profile import VoiceProfile
from app.voice.service import VoiceProfiles
from tests.archive.conftest import ALICE, SHERLOCK, CachingEmbedder, settings_for
from tests.conftest import seed_example

#: The voice: the first nine of the twelve stories; the held-out passage is from the last.
VOICE_CHARS = 430_000
DOYLE_HELD_OUT = slice(540_000, 543_000)
CARROLL = slice(60_000, 63_000)


@pytest.fixture(scope="module")
def voiced(embedder: CachingEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    settings = settings_for("embedded", tmp_path_factory.mktemp("voice"), None)
    archive = Archive.open(settings.archive, Metrics(), embedder=embedder)
    doyle = SHERLOCK.read_text(encoding="utf-8")[:VOICE_CHARS]
    archive.ingest_bytes("doyle-voice.txt", doyle.encode("utf-8"), voice=True)
    archive.ingest_bytes(ALICE.name, ALICE.read_bytes())
    return archive


def test_the_voice_profile_tells_doyle_from_carroll(voiced: Archive, embedder):
    profile = VoiceProfiles().profile(voiced)
    assert profile.files == ("doyle-voice.txt",) and profile.passages > 100
    doyle = SHERLOCK.read_text(encoding="utf-8")[DOYLE_HELD_OUT]
    carroll = ALICE.read_text(encoding="utf-8")[CARROLL]
    near, far = profile.compare(doyle, embedder.embed), profile.compare(carroll, embedder.embed)
    margin = near["style_similarity"] - far["style_similarity"]
    print(f"\nstyle similarity to the Doyle profile: Doyle {near['style_similarity']:.3f}, "
          f"Carroll {far['style_similarity']:.3f}, margin {margin:.3f}; function words: "
          f"Doyle {near['function_word_similarity']:.3f}, "
          f"Carroll {far['function_word_similarity']:.3f}")
    assert margin > 0.05
    assert near["function_word_similarity"] > far["function_word_similarity"]


def test_voice_passages_are_exemplars_never_story(voiced: Archive):
    query = "Holmes examined the letter by the window while Watson waited"
    story = voiced.context_passages(query)
    assert story and all(p.file == ALICE.name for p in story)
    exemplars = voiced.voice_exemplars(query, 3)
    assert len(exemplars) == 3 and all(p.file == "doyle-voice.txt" for p in exemplars)
    files = {f.file: f.voice for f in voiced.files().files}
    assert files == {"doyle-voice.txt": True, ALICE.name: False}


def test_the_profile_is_rebuilt_when_the_voice_files_change(voiced: Archive):
    profiles = VoiceProfiles()
    first = profiles.profile(voiced)
    assert profiles.profile(voiced) is first  # unchanged: cached
    voiced.ingest_bytes("more-voice.txt", b"I had called upon my friend one autumn day.\n",
                        voice=True)
    try:
        second = profiles.profile(voiced)
        assert second is not first and "more-voice.txt" in second.files
        assert isinstance(second, VoiceProfile)
    finally:
        voiced.delete_file("more-voice.txt")


@pytest.fixture
def mode() -> str:
    return "embedded"


VOICE_TEXT = ("It was a bitter night, and Holmes drew his chair to the fire. \"You see, "
              "Watson,\" said he, \"but you do not observe. The distinction is clear.\"\n")


def test_voice_over_http_and_exemplars_in_a_prose_prompt(app_client: TestClient, fake):
    missing = app_client.get("/api/v1/voice")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "voice_profile_missing"
    uploaded = app_client.post("/api/v1/archive/files", params={"voice": "true"},
                               files={"file": ("holmes.txt", VOICE_TEXT.encode())})
    assert uploaded.status_code == 201, uploaded.text
    profile = app_client.get("/api/v1/voice").json()
    assert profile["files"] == ["holmes.txt"] and profile["passages"] >= 1
    assert profile["stylometrics"]["dialogue_share"] > 0.3
    compared = app_client.post("/api/v1/voice/compare", json={"text": VOICE_TEXT}).json()
    assert compared["style_similarity"] > 0.9
    asked = app_client.get("/api/v1/voice", params={"text": "Holmes smiled."}).json()
    assert asked["comparison"]["words"] == 2 and profile["comparison"] is None
    chapter = app_client.post("/api/v1/generate-chapter", json=seed_example()).json()
    exemplars = [e for e in chapter["context_metadata"]["elements"]
                 if e["kind"] == "style_exemplar"]
    assert exemplars and exemplars[0]["source"]["file"] == "holmes.txt"
    assert "Holmes drew his chair" in "\n".join(m.content for m in fake.calls[-1][0])
    review = app_client.post("/api/v1/context/preview", json={
        "operation": "editor-review",
        "request": {**seed_example(), "chapter_to_review": "Aria ran."}})
    assert review.status_code == 200, review.text
    assert not [e for e in review.json()["context_metadata"]["elements"]
                if e["kind"] == "style_exemplar"]


def test_a_chosen_passage_becomes_a_voice_exemplar(app_client: TestClient, tmp_path):
    services = app_client.app.state.services  # type: ignore[attr-defined]
    services.settings = services.settings.replace(feedback_db_path=tmp_path / "f.sqlite3")
    answer = app_client.post("/api/v1/feedback", json={
        "story_id": "aria", "chosen": "Aria listened to the rain, and the rain listened back.",
        "rejected": ["It rained."], "rating": 9})
    assert answer.status_code == 201, answer.text
    record = answer.json()
    assert record["exemplar_file"] == f"feedback/aria/{record['id']}.txt"
    assert app_client.get("/api/v1/voice").json()["files"] == [record["exemplar_file"]]
