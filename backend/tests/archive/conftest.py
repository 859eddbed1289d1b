"""Archive fixtures: the real embedding model, a real Chroma (embedded, and a `chroma run`
server on loopback), and the full corpus ingested once per store mode.

The corpus is embedded once per session: a caching wrapper around the embedding model lets
the server-mode ingest reuse the vectors of the embedded-mode one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.archive.embeddings import Embedder
from app.archive.service import Archive
from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.observability.metrics import Metrics

BACKEND = Path(__file__).resolve().parents[2]
CORPUS = BACKEND.parent.parent / "shared" / "corpus"
ALICE = CORPUS / "carroll-alice.txt"
SHERLOCK = CORPUS / "doyle-adventures-of-sherlock-holmes.txt"

MODES = ["embedded", "server"]


class CachingEmbedder(Embedder):
    """The real embedder with a per-session cache of text -> vector (tests only), and
    optionally another recorded name or a truncated dimension to play a different model."""

    def __init__(self, inner: Embedder, name: str | None = None,
                 dimension: int | None = None) -> None:
        self.__dict__.update(inner.__dict__)
        self._inner = inner
        self.name = name or inner.name
        self.dimension = dimension or inner.dimension
        self._cache: dict[str, np.ndarray] = {}
        self.embedded = 0

    def embed(self, texts: Sequence[str], *, batch_size: int = 32,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self._inner.embed(missing, batch_size=batch_size)
            self._cache.update(zip(missing, vectors, strict=True))
            self.embedded += len(missing)
        if progress is not None:
            progress(len(texts))
        rows = np.array([self._cache[t] for t in texts], dtype=np.float32).reshape(
            len(texts), -1)
        if self.dimension != rows.shape[1]:
            rows = rows[:, :self.dimension]
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChromaServer:
    """A `chroma run` process on loopback with its data in ``path``."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path, self.port = path, port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChromaServer:
        chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        self.log = open(self.path.parent / f"chroma-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [chroma, "run", "--path", str(self.path), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {self.process.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat",
                             timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("chroma run did not answer its heartbeat in 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()


def settings_for(mode: str, tmp: Path, server: ChromaServer | None, **overrides: object
                 ) -> Settings:
    """Settings of an isolated archive: a fresh directory (embedded) or a fresh collection on
    the shared server."""
    base: dict[str, object] = {"archive_db_path": tmp / "archive",
                               "archive_collection": f"test-{uuid.uuid4().hex[:12]}"}
    if mode == "server":
        assert server is not None
        base |= {"chroma_host": "127.0.0.1", "chroma_port": server.port}
    return Settings(**(base | overrides))


@pytest.fixture(scope="session")
def real_embedder() -> Embedder:
    return Embedder.load(None)


@pytest.fixture(scope="session")
def embedder(real_embedder: Embedder) -> CachingEmbedder:
    return CachingEmbedder(real_embedder)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data").start()
    yield server
    server.stop()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_settings(mode: str, tmp_path: Path, request: pytest.FixtureRequest
                  ) -> Callable[..., Settings]:
    server = request.getfixturevalue("chroma_server") if mode == "server" else None
    return lambda **overrides: settings_for(mode, tmp_path, server, **overrides)


@pytest.fixture
def archive(make_settings: Callable[..., Settings], embedder: CachingEmbedder) -> Archive:
    """An empty archive in the parametrized store mode, on the real embedding model."""
    return Archive.open(make_settings().archive, Metrics(), embedder=embedder)


@pytest.fixture(scope="session", params=MODES)
def corpus_archive(request: pytest.FixtureRequest, embedder: CachingEmbedder,
                   tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The whole corpus (Alice and the twelve Sherlock Holmes stories) ingested, per mode."""
    mode = request.param
    server = request.getfixturevalue("chroma_server") if mode == "server" else None
    settings = settings_for(mode, tmp_path_factory.mktemp(f"corpus-{mode}"), server)
    archive = Archive.open(settings.archive, Metrics(), embedder=embedder)
    for path in (ALICE, SHERLOCK):
        archive.ingest_bytes(path.name, path.read_bytes())
    return archive


def wait_archive(client: TestClient, timeout: float = 120) -> str:
    """Wait until the app's archive finished loading; returns its status."""
    services = client.app.state.services  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while services.archive.status == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    return services.archive.status


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator(replies=["The archive says so [1]. Also [2] and [9]."])


@pytest.fixture
def app_client(make_settings: Callable[..., Settings], fake: FakeGenerator,
               real_embedder: Embedder) -> Iterator[TestClient]:
    """The app on the fake generator with an empty archive in the parametrized mode."""
    settings = make_settings(archive_max_upload_bytes=4096)
    with TestClient(create_app(settings, generator=fake)) as client:
        assert wait_archive(client) == "ready"
        yield client
