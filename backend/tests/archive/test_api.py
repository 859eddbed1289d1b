"""The archive over HTTP (fake text generator, real embeddings and Chroma): files, search,
bad uploads, RAG, archive passages in agent reports, and Chroma failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from app.archive.service import Archive, ArchiveState
from app.config import Settings
from app.errors import ArchiveUnavailable
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.observability.metrics import Metrics

from .conftest import SHERLOCK, ChromaServer, free_port, settings_for, wait_archive
from .test_store import RECIPES, STORY

API = "/api/v1/archive"
KKK_CHAPTER = {
    "plot_point": "Holmes's client shows him a letter signed K.K.K. with five dried orange pips.",
    "structured_context": {
        "plot_elements": [{"type": "plot_point", "content": "A warning arrives by post."}],
        "chapters": [{"number": 1, "title": "Baker Street",
                      "content": "It was a wild, stormy evening in September."}],
    },
    "max_tokens": 50,
}


def upload(client: TestClient, name: str, data: bytes | str):
    if isinstance(data, str):
        data = data.encode()
    return client.post(f"{API}/files", files={"file": (name, data)})


def events(client: TestClient, path: str, body: dict) -> list[tuple[str, dict]]:
    with connect_sse(client, "POST", path, json=body) as source:
        return [(e.event, json.loads(e.data)) for e in source.iter_sse()]


def archive_elements(report: dict) -> list[dict]:
    return [e for e in report["elements"] if e["kind"] == "archive_passage"]


def test_files_over_http(app_client: TestClient) -> None:
    created = upload(app_client, "lighthouse.txt", STORY)
    assert created.status_code == 201, created.text
    assert created.json()["chapters"] == 2 and created.json()["unchanged"] is False
    assert upload(app_client, "recipes.md", RECIPES).status_code == 201
    assert upload(app_client, "lighthouse.txt", STORY).json()["unchanged"] is True

    listing = app_client.get(f"{API}/files").json()["files"]
    assert [f["file"] for f in listing] == ["lighthouse.txt", "recipes.md"]
    text = app_client.get(f"{API}/files/lighthouse.txt/text").json()
    assert text["text"] == STORY and text["title"] == "The Lighthouse"

    found = app_client.post(f"{API}/search", json={
        "query": "a lantern held all night in a storm", "top_k": 2}).json()
    first = found["passages"][0]
    assert (first["file"], first["chapter"]) == ("lighthouse.txt", "CHAPTER 2. The Storm")
    filtered = app_client.post(f"{API}/search", json={
        "query": "storm", "file": "recipes.md"}).json()["passages"]
    assert {p["file"] for p in filtered} == {"recipes.md"}

    stats = app_client.get(f"{API}/stats").json()
    assert stats["files"] == 2 and stats["embedding_model"].endswith("all-MiniLM-L6-v2")

    assert app_client.delete(f"{API}/files/recipes.md").json()["deleted_chunks"] >= 1
    missing = app_client.delete(f"{API}/files/recipes.md")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "archive_file_not_found"
    assert app_client.get(f"{API}/files/recipes.md/text").status_code == 404


@pytest.mark.parametrize(("name", "data", "status", "code", "words"), [
    ("empty.txt", b"", 422, "invalid_document", "empty"),
    ("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00IHDR", 422, "invalid_document", "binary"),
    ("story.pdf", b"%PDF-1.7", 415, "unsupported_document", ".txt, .md, .docx and .html"),
    ("latin1.txt", "déjà vu".encode("latin-1"), 422, "invalid_document", "not valid UTF-8"),
    ("broken.docx", b"PK\x03\x04garbage", 422, "invalid_document", "not a valid .docx"),
    ("big.txt", b"word " * 1000, 413, "document_too_large", "4096 bytes"),
])
def test_bad_uploads_are_4xx_with_a_clear_message(
    app_client: TestClient, name: str, data: bytes, status: int, code: str, words: str
) -> None:
    response = upload(app_client, name, data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]
    assert app_client.get(f"{API}/files").json()["files"] == []


def test_upload_must_be_multipart_with_a_file(app_client: TestClient) -> None:
    as_json = app_client.post(f"{API}/files", json={"file": "text"})
    assert as_json.status_code == 422 and "multipart/form-data" in as_json.text
    no_file = app_client.post(f"{API}/files", data={"other": "x"},
                              files={"notfile": ("a.txt", b"x")})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["error"]["message"]
    huge = app_client.post(f"{API}/files", content=b"x" * 200_000,
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert huge.status_code == 413


def test_search_validation(app_client: TestClient) -> None:
    for body in ({"query": ""}, {"query": "x", "top_k": 0}, {"query": "x", "top_k": 51},
                 {"query": "x", "unknown": 1}):
        response = app_client.post(f"{API}/search", json=body)
        assert response.status_code == 422, body


def test_rag_query_cites_numbered_sources(app_client: TestClient, fake: FakeGenerator) -> None:
    upload(app_client, "lighthouse.txt", STORY)
    upload(app_client, "recipes.md", RECIPES)
    response = app_client.post(f"{API}/rag/query", json={
        "question": "Who kept the lighthouse and for how long?", "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"].startswith("The archive says so [1]")
    assert [s["n"] for s in body["sources"]] == [1, 2]
    assert body["cited"] == [1, 2]  # [9] names no source
    assert body["sources"][0]["file"] == "lighthouse.txt"
    system = fake.calls[-1][0][0].content
    assert "[1] (The Lighthouse, CHAPTER 1. The Keeper)" in system
    assert "forty years" in system
    too_long = app_client.post(f"{API}/rag/query", json={"question": "x", "max_tokens": 10**6})
    assert too_long.status_code == 422


def test_rag_chat_streams_meta_tokens_done(app_client: TestClient) -> None:
    upload(app_client, "lighthouse.txt", STORY)
    stream = events(app_client, f"{API}/rag/chat", {
        "messages": [{"role": "user", "content": "Tell me about the keeper."},
                     {"role": "assistant", "content": "He is Tom."},
                     {"role": "user", "content": "What did he do in the storm?"}],
        "top_k": 3})
    names = [name for name, _ in stream]
    assert names[0] == "meta" and names[-1] == "done" and "token" in names
    assert names.count("done") == 1 and "error" not in names
    sources = stream[0][1]["sources"]
    assert sources and sources[0]["chapter"] == "CHAPTER 2. The Storm"
    done = stream[-1][1]
    tokens = "".join(data["text"] for name, data in stream if name == "token")
    assert done["text"] == tokens.strip() and done["cited"] == [1, 2]
    bad = app_client.post(f"{API}/rag/chat", json={"messages": [
        {"role": "assistant", "content": "Hi"}]})
    assert bad.status_code == 422


@pytest.fixture
def corpus_client(corpus_archive: Archive) -> Iterator[tuple[TestClient, FakeGenerator]]:
    """The app on the fake generator over the archived corpus."""
    fake = FakeGenerator(replies=["Holmes read the letter twice."])
    app = create_app(Settings(archive=corpus_archive.settings), generator=fake)
    with TestClient(app) as client:
        assert wait_archive(client) == "ready"
        yield client, fake


def test_chapter_request_reports_archive_passages(
    corpus_client: tuple[TestClient, FakeGenerator]
) -> None:
    client, fake = corpus_client
    response = client.post("/api/v1/generate-chapter", json=KKK_CHAPTER)
    assert response.status_code == 200, response.text
    passages = archive_elements(response.json()["context_metadata"])
    assert passages, response.json()["context_metadata"]["elements"]
    for element in passages:
        assert element["layer"] == "plot_world" and element["priority"] == "low"
        assert element["source"]["file"] and "chapter" in element["source"]
        assert element["source"]["score"] >= 0.2
    kept = [e for e in passages if e["fate"] == "kept"]
    assert any(e["source"] == {**e["source"], "file": SHERLOCK.name,
                               "chapter": "V. THE FIVE ORANGE PIPS"} for e in kept)
    prompt = "\n".join(m.content for m in fake.calls[-1][0])
    assert "From the archive (The Adventures of Sherlock Holmes, V. THE FIVE ORANGE PIPS)" in (
        prompt)

    off = {**KKK_CHAPTER, "context_processing_config": {"use_archive": False}}
    report = client.post("/api/v1/generate-chapter", json=off).json()["context_metadata"]
    assert archive_elements(report) == []

    # The stream's meta event carries the same report.
    stream = events(client, "/api/v1/generate-chapter/stream", KKK_CHAPTER)
    assert archive_elements(stream[0][1]["context_metadata"])


def test_archive_passages_compete_for_the_plot_world_budget(
    corpus_client: tuple[TestClient, FakeGenerator]
) -> None:
    client, _ = corpus_client
    tight = {**KKK_CHAPTER, "context_processing_config": {"max_context_tokens": 700}}
    report = client.post("/api/v1/generate-chapter", json=tight).json()["context_metadata"]
    passages = archive_elements(report)
    assert passages and any(e["fate"] != "kept" for e in passages)
    layer = next(layer for layer in report["layers"] if layer["layer"] == "plot_world")
    assert layer["used_tokens"] <= layer["budget_tokens"]
    # Dropped or trimmed passages say why; the request's own plot element outranks them.
    assert all(e["reason"] for e in passages)
    plot = next(e for e in report["elements"] if e["kind"] == "plot_element")
    assert plot["fate"] == "kept"


def test_rag_query_over_the_corpus_grounds_on_the_right_story(
    corpus_client: tuple[TestClient, FakeGenerator]
) -> None:
    client, _ = corpus_client
    body = client.post(f"{API}/rag/query", json={
        "question": "Which story has a goose with a blue stone in its crop?",
        "top_k": 3}).json()
    assert body["sources"][0]["chapter"] == "VII. THE ADVENTURE OF THE BLUE CARBUNCLE"


# --- failures ----------------------------------------------------------------------------------


def assert_unavailable(client: TestClient) -> None:
    calls = [("GET", f"{API}/files", None), ("GET", f"{API}/stats", None),
             ("POST", f"{API}/search", {"query": "storm"}),
             ("GET", f"{API}/files/lighthouse.txt/text", None),
             ("DELETE", f"{API}/files/lighthouse.txt", None),
             ("POST", f"{API}/rag/query", {"question": "storm?"})]
    for method, path, body in calls:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "archive_unavailable"
        assert response.headers["retry-after"]
    response = upload(client, "other.txt", "Some text.")
    assert response.status_code == 503


def chapter_without_archive(client: TestClient) -> None:
    response = client.post("/api/v1/generate-chapter", json=KKK_CHAPTER)
    assert response.status_code == 200, response.text
    assert response.json()["chapter_text"]
    assert archive_elements(response.json()["context_metadata"]) == []


def test_chroma_server_down_is_503_and_chapters_still_work(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "chroma", free_port()).start()
    try:
        settings = settings_for("server", tmp_path, server, archive_max_upload_bytes=4096)
        with TestClient(create_app(settings, generator=FakeGenerator())) as client:
            assert wait_archive(client) == "ready"
            assert upload(client, "lighthouse.txt", STORY).status_code == 201
            server.stop()
            assert_unavailable(client)
            chapter_without_archive(client)
            # A server that comes back is picked up without a restart.
            server.start()
            found = client.post(f"{API}/search", json={"query": "storm"})
            assert found.status_code == 200 and found.json()["passages"]
    finally:
        server.stop()


def test_unwritable_archive_directory_is_503_and_chapters_still_work(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the archive directory should be")
    settings = Settings(archive_db_path=blocker / "archive", archive_collection="unwritable")
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "ready"
        assert_unavailable(client)
        chapter_without_archive(client)


def test_disabled_archive_is_503_and_chapters_still_work(tmp_path: Path) -> None:
    settings = Settings(archive_enabled=False, archive_db_path=tmp_path / "archive")
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "disabled"
        response = client.get(f"{API}/stats")
        assert response.status_code == 503 and "disabled" in response.json()["error"]["message"]
        chapter_without_archive(client)
    assert not (tmp_path / "archive").exists()


@pytest.mark.parametrize(("state", "words"), [
    (ArchiveState(Metrics()), "still loading"),
    (ArchiveState(Metrics(), status="error", error="no model"), "failed to load: no model"),
    (ArchiveState(Metrics(), status="disabled"), "disabled"),
])
def test_archive_state_says_why_it_is_unavailable(state: ArchiveState, words: str) -> None:
    with pytest.raises(ArchiveUnavailable) as raised:
        state.require()
    assert words in raised.value.message
    assert state.ready() is None


def test_a_bad_embedding_model_setting_is_reported(tmp_path: Path) -> None:
    settings = Settings(embedding_model=str(tmp_path / "no-such-model"),
                        archive_db_path=tmp_path / "archive")
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "error"
        response = client.get(f"{API}/stats")
        assert response.status_code == 503
        assert "EMBEDDING_MODEL" in response.json()["error"]["message"]
        chapter_without_archive(client)
