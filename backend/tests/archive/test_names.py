"""Files are keyed by their path relative to the folder ingested, or by the name an upload
gives (issue 12, row 8): ``a/notes.md`` and ``b/notes.md`` are two files."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import app.archive.service as service
from app.archive.documents import archive_name
from app.cli import app as cli
from app.config import Settings
from app.errors import InvalidDocument
from app.llm.fake import FakeGenerator
from app.main import create_app

from .conftest import wait_archive
from .fakes import HashEmbedder, story

API = "/api/v1/archive"


@pytest.fixture(autouse=True)
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = HashEmbedder()
    monkeypatch.setattr(service.Embedder, "load", lambda model=None: fake)
    monkeypatch.setattr(service, "set_threads", lambda threads: None)


def run(db: Path, *args: str):
    return CliRunner().invoke(cli, ["--db-path", str(db), *args])


def test_the_cli_keys_files_by_their_path_in_the_folder(tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    for folder, seed in (("a", 1), ("b", 2)):
        (texts / folder).mkdir(parents=True)
        (texts / folder / "notes.md").write_text(story(seed))
    (texts / "c.txt").write_text(story(3))
    db = tmp_path / "archive"
    result = run(db, "ingest", str(texts))
    assert result.exit_code == 0, result.output
    listing = run(db, "files").output.splitlines()
    assert [line.split("\t")[0] for line in listing] == ["a/notes.md", "b/notes.md", "c.txt"]
    assert "a/notes.md\tnotes" in listing[0]  # the title is the file's own
    # A file given by itself is keyed by its base name.
    assert "c.txt: " in run(db, "ingest", str(texts / "c.txt")).output
    assert run(db, "delete", "b/notes.md").output.startswith("deleted b/notes.md")


def test_two_files_that_would_share_a_name_are_not_merged(tmp_path: Path) -> None:
    for folder, seed in (("x", 1), ("y", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.md").write_text(story(seed))
    db = tmp_path / "archive"
    result = run(db, "ingest", str(tmp_path / "x"), str(tmp_path / "y"))
    assert result.exit_code == 1
    assert "is archived as 'notes.md' too" in result.stderr
    assert "1 files archived" in result.output and "1 skipped" in result.output


def test_uploads_keep_the_path_they_are_given(tmp_path: Path) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive")
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "ready"
        for name, seed in (("a/notes.md", 1), ("b\\notes.md", 2)):
            created = client.post(f"{API}/files", files={"file": (name, story(seed).encode())})
            assert created.status_code == 201, created.text
        files = [f["file"] for f in client.get(f"{API}/files").json()["files"]]
        assert files == ["a/notes.md", "b/notes.md"]
        assert client.get(f"{API}/files/a/notes.md/text").json()["text"] == story(1)
        assert client.get(f"{API}/files/b/notes.md/text").json()["text"] == story(2)
        assert client.delete(f"{API}/files/b/notes.md").json()["file"] == "b/notes.md"
        assert client.get(f"{API}/files/b/notes.md/text").status_code == 404
        upward = client.post(f"{API}/files", files={"file": ("../up.md", b"Text.")})
        assert upward.status_code == 422 and "'..'" in upward.json()["error"]["message"]


@pytest.mark.parametrize(("name", "key"), [
    ("notes.md", "notes.md"), ("a/notes.md", "a/notes.md"), ("a\\b\\notes.md", "a/b/notes.md"),
    ("/srv/notes.md", "srv/notes.md"), ("C:\\Users\\me\\notes.md", "Users/me/notes.md"),
    ("./a//b/ notes.md ", "a/b/notes.md"),
])
def test_archive_names(name: str, key: str) -> None:
    assert archive_name(name) == key


@pytest.mark.parametrize(("name", "words"), [
    ("", "empty"), ("./", "empty"), ("a/../b.md", "'..'"), ("x" * 300 + ".md", "up to 255"),
])
def test_bad_archive_names(name: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as raised:
        archive_name(name)
    assert words in raised.value.message
