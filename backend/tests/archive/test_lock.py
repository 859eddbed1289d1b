"""One process at a time opens an embedded archive directory (issue 12, row 7): a second one
(the CLI beside a running server) is refused with a message that says what to do instead."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from filelock import FileLock, Timeout
from typer.testing import CliRunner

import app.archive.service as service
from app.archive.store import LOCK_FILE, ChromaStore
from app.cli import app as cli
from app.config import Settings
from app.errors import ArchiveUnavailable
from app.llm.fake import FakeGenerator
from app.main import create_app

from .conftest import BACKEND, wait_archive
from .fakes import OLD, HashEmbedder

FAKE = HashEmbedder()
#: A stand-in for the server: opens the embedded store, says "ready", holds it until its
#: standard input closes.
HOLDER = """
import sys
from app.archive.store import ChromaStore
from app.config import Settings
from app.errors import ArchiveUnavailable
store = ChromaStore(Settings(archive_db_path=sys.argv[1]).archive, "test/hash-embedder", 16)
store.check()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.Embedder, "load", lambda model=None: FAKE)
    monkeypatch.setattr(service, "set_threads", lambda threads: None)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """An archive directory another process holds open."""
    db = tmp_path / "archive"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=BACKEND, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield db
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)


def ingest(db: Path, file: Path):
    return CliRunner().invoke(cli, ["--db-path", str(db), "ingest", str(file)])


def test_the_cli_is_refused_while_another_process_holds_the_archive(
    held: Path, tmp_path: Path
) -> None:
    story = tmp_path / "a.txt"
    story.write_text(OLD["a.txt"])
    refused = ingest(held, story)
    assert refused.exit_code == 1, refused.output
    assert "error (archive_unavailable): The archive directory is in use by another process" \
        in refused.stderr
    for advice in ("Stop that process", "POST /api/v1/archive/files", "CHROMA_HOST"):
        assert advice in refused.stderr


def test_the_server_answers_503_while_another_process_holds_the_archive(held: Path) -> None:
    settings = Settings(archive_db_path=held)
    with TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "ready"
        upload = client.post("/api/v1/archive/files", files={"file": ("a.txt", b"Some text.")})
        assert upload.status_code == 503
        assert "in use by another process" in upload.json()["error"]["message"]
        assert str(held) not in upload.text
        assert client.get("/api/v1/archive/files").status_code == 503


def test_the_lock_is_released_when_the_last_store_closes(tmp_path: Path) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive").archive
    first, second = (ChromaStore(settings, FAKE.name, FAKE.dimension) for _ in range(2))
    first.check()
    second.check()  # the same process shares its lock

    def free() -> bool:
        probe = FileLock(str(tmp_path / "archive" / LOCK_FILE), timeout=0, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            return False
        probe.release()
        return True

    assert not free()
    first.close()
    assert not free()
    second.close()
    assert free()
    story = tmp_path / "a.txt"
    story.write_text(OLD["a.txt"])
    assert ingest(tmp_path / "archive", story).exit_code == 0  # and the CLI gets it
    assert free()  # until it exits


def test_a_chroma_server_takes_no_lock(tmp_path: Path) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive", chroma_host="127.0.0.1",
                        chroma_port=9).archive
    store = ChromaStore(settings, FAKE.name, FAKE.dimension)
    with pytest.raises(ArchiveUnavailable):  # nothing listens; only the lock matters
        store.check()
    assert not (tmp_path / "archive").exists()
