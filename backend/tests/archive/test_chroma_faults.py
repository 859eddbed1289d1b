"""Chroma failing under a running app, on real parts: a `chroma run` server paused (SIGSTOP)
and killed (SIGKILL) mid-ingest of a corpus book, and a server that takes connections but
never answers. The app runs on the fake text generator; ``CHROMA_TIMEOUT_S`` is short.

Ingest uses the real tokenizer (so chunking is real) with vectors hashed from the text
instead of the embedding model: a whole book then embeds in milliseconds instead of a minute
on 2 cores, and what is under test is Chroma's failure, not the embeddings.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.archive.embeddings import Embedder
from app.archive.store import ChromaStore
from app.config import Settings
from app.errors import ArchiveUnavailable
from app.llm.fake import FakeGenerator
from app.main import create_app

from .conftest import ALICE, ChromaServer, settings_for, wait_archive
from .test_api import API, KKK_CHAPTER, archive_elements, upload
from .test_store import STORY

T = TypeVar("T")

#: CHROMA_TIMEOUT_S of these tests, in seconds.
TIMEOUT_S = 1.0
#: Longest a call may take while Chroma hangs: a read timeout, then a connect timeout, plus
#: room for 2 busy cores.
PROMPT_S = 2 * TIMEOUT_S + 4


class HashEmbedder(Embedder):
    """The real embedding model's tokenizer, with unit vectors seeded by a hash of each text
    (deterministic, the model's dimension) instead of the model's embeddings."""

    def __init__(self, inner: Embedder) -> None:
        self.__dict__.update(inner.__dict__)

    def embed(self, texts: Sequence[str], *, batch_size: int = 32,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows[i] = np.random.default_rng(seed).standard_normal(self.dimension)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        if progress is not None:
            progress(len(texts))
        return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One `chroma run` for the module; each test leaves it running (resumed, restarted)."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-faults") / "data").start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def hashed(real_embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> HashEmbedder:
    """The app's archive embeds with :class:`HashEmbedder`."""
    embedder = HashEmbedder(real_embedder)
    monkeypatch.setattr(Embedder, "load", lambda model=None: embedder)
    return embedder


@pytest.fixture
def client(server: ChromaServer, hashed: HashEmbedder, tmp_path: Path) -> Iterator[TestClient]:
    """The app on the fake generator, its archive a fresh collection on ``server``."""
    settings = settings_for("server", tmp_path, server, chroma_timeout_s=TIMEOUT_S,
                            quality_max_retries=0, rate_limit_per_minute=0,
                            rate_limit_concurrent=0)
    with TestClient(create_app(settings, generator=FakeGenerator())) as test_client:
        assert wait_archive(test_client) == "ready"
        yield test_client


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, failing the test when it takes longer than ``seconds`` (the call
    is left to finish on a daemon thread)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome.append(("error", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the call did not return within {seconds:g} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@contextmanager
def paused(server: ChromaServer) -> Iterator[None]:
    """``server`` stopped with SIGSTOP (it keeps its port: connections are accepted by the
    kernel and never answered), and continued afterwards whatever happens."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def kill(server: ChromaServer) -> None:
    """SIGKILL ``server`` and wait for it to die."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=15)


def wait_ready(client: TestClient, seconds: float = 20) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/ready")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_a_server_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    # A listening socket nobody accepts from: connections complete, requests never get an
    # answer, as with a paused or wedged server. chromadb's own client would wait forever,
    # already inside its constructor.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings = Settings(chroma_host="127.0.0.1", chroma_port=silent.getsockname()[1],
                            chroma_timeout_s=0.5, archive_db_path=tmp_path / "unused")
        store = ChromaStore(settings.archive, "test-model", 8)
        started = time.monotonic()
        with pytest.raises(ArchiveUnavailable):
            within(0.5 * 2 + 4, store.check)
        assert time.monotonic() - started >= 0.5  # it waited for an answer, then gave up
        # Calls right after fail at once instead of each waiting out the timeout again.
        started = time.monotonic()
        with pytest.raises(ArchiveUnavailable) as raised:
            within(2, store.ping)
        assert time.monotonic() - started < 0.5
        assert raised.value.retry_after == 0.5
        assert "127.0.0.1" not in raised.value.message


def test_a_paused_server_fails_calls_promptly_and_is_picked_up_again(
        server: ChromaServer, client: TestClient) -> None:
    assert upload(client, "lighthouse.txt", STORY).status_code == 201
    assert client.get("/ready").status_code == 200
    with paused(server):
        # First, while the app still holds its open collection: /ready asks the server.
        ready = within(PROMPT_S, lambda: client.get("/ready"))
        assert ready.status_code == 503
        assert "archive_unreachable" in ready.json()["error"]["details"]["reasons"]
        assert "127.0.0.1" not in ready.text and "http" not in ready.text.lower()
        # A chapter is still written, without archive passages (retrieval never fails an
        # agent request), and promptly.
        chapter = within(PROMPT_S, lambda: client.post("/api/v1/generate-chapter",
                                                       json=KKK_CHAPTER))
        assert chapter.status_code == 200, chapter.text
        assert archive_elements(chapter.json()["context_metadata"]) == []
        search = within(PROMPT_S, lambda: client.post(f"{API}/search", json={"query": "storm"}))
        assert search.status_code == 503
        assert search.json()["error"]["code"] == "archive_unavailable"
        assert int(search.headers["retry-after"]) >= 1
        assert "127.0.0.1" not in search.text
    # Continued: the same app sees it again, without a restart.
    assert wait_ready(client).status_code == 200
    found = client.post(f"{API}/search", json={"query": "storm"})
    assert found.status_code == 200 and found.json()["passages"]


def test_waiting_on_a_paused_server_does_not_hold_the_model(
        server: ChromaServer, client: TestClient) -> None:
    assert upload(client, "lighthouse.txt", STORY).status_code == 201
    scheduler = client.app.state.services.scheduler  # type: ignore[attr-defined]
    results: list[httpx.Response] = []
    with paused(server):
        waiting = threading.Thread(target=lambda: results.append(
            client.post("/api/v1/generate-chapter", json=KKK_CHAPTER)), daemon=True)
        waiting.start()
        time.sleep(0.3)  # it is now waiting on Chroma for its archive passages
        assert waiting.is_alive() and scheduler.running == 0
        # Another request, with no archive, gets the model meanwhile.
        without = {**KKK_CHAPTER, "context_processing_config": {"use_archive": False}}
        other = within(PROMPT_S, lambda: client.post("/api/v1/generate-chapter", json=without))
        assert other.status_code == 200
        waiting.join(PROMPT_S)
        assert not waiting.is_alive(), "the request waiting on Chroma never answered"
    assert results[0].status_code == 200


@pytest.mark.parametrize("write", [
    pytest.param(1, id="before-the-first-write"),
    # The first write (chunk 0, which lists the file, and 99 more) was acknowledged and the
    # rollback could not reach the dead server: before the catalog's commits (issue 12 row
    # 9) the book was listed with 264 chunks and had 100.
    pytest.param(2, id="between-writes"),
])
def test_a_server_killed_mid_ingest_leaves_nothing_half_written(
        server: ChromaServer, client: TestClient, monkeypatch: pytest.MonkeyPatch,
        write: int) -> None:
    data = ALICE.read_bytes()
    # Writes of 100 chunks, so the book (264 chunks) takes three; the server dies as the
    # ``write``-th starts (the ones before it were acknowledged).
    monkeypatch.setattr(ChromaStore, "max_batch_size", lambda self: 100)
    real_upsert = ChromaStore.upsert
    writes = itertools.count(1)

    def upsert(self: ChromaStore, *args: Any, **kwargs: Any) -> None:
        if next(writes) == write:
            kill(server)
        real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(ChromaStore, "upsert", upsert)
    failed = within(30, lambda: upload(client, ALICE.name, data))
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "archive_unavailable"
    assert failed.headers["retry-after"]
    assert "127.0.0.1" not in failed.text

    monkeypatch.setattr(ChromaStore, "upsert", real_upsert)
    server.stop()  # bookkeeping of the dead process
    server.start()  # the same path and port
    assert wait_ready(client).status_code == 200
    # Nothing of the book shows: not listed, no text, no passage.
    assert client.get(f"{API}/files").json()["files"] == []
    assert client.get(f"{API}/files/{ALICE.name}/text").status_code == 404
    found = client.post(f"{API}/search", json={"query": "the White Rabbit", "top_k": 50})
    assert found.status_code == 200 and found.json()["passages"] == []
    # The retry archives it whole.
    retried = client.post(f"{API}/files", files={"file": (ALICE.name, data)})
    assert retried.status_code == 201, retried.text
    listed = client.get(f"{API}/files").json()["files"]
    assert [(f["file"], f["chunks"]) for f in listed] == [(ALICE.name, 264)]
    text = client.get(f"{API}/files/{ALICE.name}/text").json()
    assert text["chars"] == len(text["text"]) == listed[0]["chars"]
    assert hashlib.sha256(text["text"].encode()).hexdigest() == listed[0]["sha256"]
