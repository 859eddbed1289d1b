"""The Chroma store: the only module that imports ``chromadb``.

Embedded by default (a ``PersistentClient`` in ``ARCHIVE_DB_PATH``); with ``CHROMA_HOST`` set,
an ``HttpClient`` to a Chroma server (``chroma run``). Either way the collection is created
without an embedding function: every embedding is computed by :mod:`app.archive.embeddings`,
and Chroma's default embedding function (which downloads a model) is never used.

Every failure of Chroma (server down, directory unwritable, a corrupt store) becomes
:class:`~app.errors.ArchiveUnavailable`; the client is rebuilt on the next call, so a server
that comes back is picked up without a restart. Every request to a server times out after
``CHROMA_TIMEOUT_S``, so a server that hangs (paused, wedged) fails calls instead of
freezing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from app.config import ArchiveSettings
from app.errors import ArchiveUnavailable, EmbeddingModelMismatch, WriterAssistantError

logger = logging.getLogger(__name__)

#: Collection metadata keys that record the embedding model.
MODEL_KEY, DIMENSION_KEY = "embedding_model", "embedding_dimension"

Metadata = dict[str, str | int | float | bool]
Where = dict[str, Any]


@dataclass(frozen=True)
class Record:
    """A stored chunk: id, text, metadata and (when asked for) similarity to a query.

    ``score`` is cosine similarity in [-1, 1] (1 - Chroma's cosine distance).
    """

    id: str
    text: str
    metadata: Metadata
    score: float | None = None


class ChromaStore:
    """One Chroma collection of chunks with their embeddings.

    Thread-safe: calls may come from FastAPI's worker threads at once.
    """

    def __init__(self, settings: ArchiveSettings, model: str, dimension: int,
                 collection: str | None = None) -> None:
        self.settings = settings
        self.name = collection or settings.collection
        self.model = model
        self.dimension = dimension
        self._client: Any = None
        self._collection: Any = None
        self._lock = threading.RLock()
        self._timed_out_at: float | None = None  # monotonic time of the last connect timeout

    @property
    def location(self) -> str:
        """Where the store lives: ``server http://HOST:PORT`` or ``embedded DIR``."""
        if self.settings.chroma_host:
            return f"server http://{self.settings.chroma_host}:{self.settings.chroma_port}"
        return f"embedded {Path(self.settings.db_path).resolve()}"

    @property
    def public_location(self) -> str:
        """:attr:`location` as clients may see it: no server-side paths."""
        return self.location if self.settings.chroma_host else "embedded"

    @property
    def mode(self) -> Literal["server", "embedded"]:
        """``server`` or ``embedded``."""
        return "server" if self.settings.chroma_host else "embedded"

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn Chroma's failures during ``action`` into ArchiveUnavailable."""
        try:
            yield
        except WriterAssistantError:
            raise
        except Exception as error:
            logger.warning("archive store failed to %s at %s: %s: %s", action, self.location,
                           type(error).__name__, error)
            with self._lock:
                self._client = self._collection = None
            # Chroma's own text can hold paths: it goes to the log above, not to clients.
            raise ArchiveUnavailable(
                f"The archive store ({self.mode}) failed to {action} "
                f"({type(error).__name__}). Check that Chroma is running and its directory is "
                "writable, then retry.",
            ) from error

    def _connect(self) -> Any:
        """A new Chroma client: an ``HttpClient`` whose every request is bounded by
        ``CHROMA_TIMEOUT_S`` (see :func:`_bounded_http_client`), or a ``PersistentClient``.

        Raises:
            ArchiveUnavailable: the server did not answer an attempt to connect within
                ``CHROMA_TIMEOUT_S`` less than that long ago (failing at once, so the calls
                queued behind this store's lock do not each wait out the timeout again).
            Exception: whatever chromadb raises (``_guard`` turns it into
                ArchiveUnavailable).
        """
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        if self.settings.chroma_host:
            timeout = self.settings.chroma_timeout_s
            if (self._timed_out_at is not None
                    and time.monotonic() - self._timed_out_at < timeout):
                raise ArchiveUnavailable(
                    f"The archive store ({self.mode}) did not answer within {timeout:g} s a "
                    "moment ago; retry in a few seconds.", retry_after=timeout)
            try:
                client = _bounded_http_client(self.settings)
            except Exception as error:
                if _timed_out(error):
                    self._timed_out_at = time.monotonic()
                raise
            self._timed_out_at = None
            return client
        path = Path(self.settings.db_path)
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path),
                                         settings=ChromaSettings(anonymized_telemetry=False))

    def _model_metadata(self) -> Metadata:
        return {MODEL_KEY: self.model, DIMENSION_KEY: self.dimension}

    def _open(self, name: str | None = None) -> Any:
        """The collection ``name`` (default: the archive's), created when missing, after
        checking it was built with this embedding model."""
        with self._lock:
            if name is None and self._collection is not None:
                return self._collection
            collection = self._client_now().get_or_create_collection(
                name or self.name, embedding_function=None, metadata=self._model_metadata(),
                configuration={"hnsw": {"space": "cosine"}},
            )
            self._check_model(collection)
            if name is None:
                self._collection = collection
            return collection

    def _check_model(self, collection: Any) -> None:
        metadata = collection.metadata or {}
        model, dimension = metadata.get(MODEL_KEY), metadata.get(DIMENSION_KEY)
        if model == self.model and dimension == self.dimension:
            return
        if model is None and collection.count() == 0:
            collection.modify(metadata={**metadata, **self._model_metadata()})
            return
        raise EmbeddingModelMismatch(
            f"The archive collection {collection.name!r} was built with the embedding model "
            f"{model!r} ({dimension} dimensions), but this server embeds with {self.model!r} "
            f"({self.dimension} dimensions). Run `writer-assistant reindex` to rebuild the "
            f"archive with {self.model!r}, or set EMBEDDING_MODEL back to {model!r}.",
            param="EMBEDDING_MODEL", collection_model=model, collection_dimension=dimension,
            server_model=self.model, server_dimension=self.dimension,
        )

    def check(self) -> None:
        """Connect and open the collection now (startup), raising what a call would raise.

        Raises:
            ArchiveUnavailable: Chroma cannot be reached or opened.
            EmbeddingModelMismatch: the collection was built with another embedding model.
        """
        with self._guard("open the collection"):
            self._open()

    def ping(self) -> None:
        """Check now that the store answers (readiness): count the collection's chunks, a
        round trip to the server bounded by ``CHROMA_TIMEOUT_S`` (the embedded store: a read
        of its database), opening the collection first when needed. Blocks: call it off the
        event loop.

        Raises:
            ArchiveUnavailable: Chroma did not answer, or failed.
            EmbeddingModelMismatch: the collection was built with another embedding model.
        """
        with self._guard("answer a health check"):
            self._open().count()

    def close(self) -> None:
        """Drop the Chroma client: an embedded store releases its SQLite files (once no other
        store in the process uses the same directory), a server's its HTTP connections. A
        later call connects again. Never raises: a failure to close is logged."""
        with self._lock:
            client, self._client, self._collection = self._client, None, None
        if client is None:
            return
        try:
            client.close()
        except Exception as error:  # noqa: BLE001 - chromadb raises many types; shutdown goes on
            logger.warning("closing the archive store at %s failed: %s: %s", self.location,
                           type(error).__name__, error)

    def max_batch_size(self) -> int:
        """Most records one write may carry (Chroma's limit)."""
        with self._guard("read its batch limit"):
            return int(self._client_now().get_max_batch_size())

    def count(self) -> int:
        """Chunks in the collection."""
        with self._guard("count chunks"):
            return int(self._open().count())

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, texts: Sequence[str],
               metadatas: Sequence[Metadata], *, collection: str | None = None) -> None:
        """Write chunks (one call; see :meth:`max_batch_size`). ``embeddings`` has shape
        ``(len(ids), dimension)``."""
        if embeddings.shape != (len(ids), self.dimension):
            raise ValueError(f"embeddings of shape {embeddings.shape}, expected "
                             f"({len(ids)}, {self.dimension})")
        with self._guard("write chunks"):
            self._open(collection).upsert(ids=list(ids), embeddings=embeddings,
                                          documents=list(texts), metadatas=list(metadatas))

    def delete(self, *, ids: Sequence[str] | None = None, where: Where | None = None,
               collection: str | None = None) -> None:
        """Delete chunks by id or by metadata filter."""
        with self._guard("delete chunks"):
            target = self._open(collection)
            if ids is not None:
                if ids:
                    target.delete(ids=list(ids))
            elif where is not None:
                target.delete(where=where)

    def ids(self, where: Where) -> list[str]:
        """Ids of the chunks matching ``where``."""
        with self._guard("list chunk ids"):
            return list(self._open().get(where=where, include=[])["ids"])

    def get(self, where: Where | None = None, *, texts: bool = True,
            limit: int | None = None) -> list[Record]:
        """Chunks matching ``where`` (all when ``None``), in no particular order."""
        include = ["metadatas", "documents"] if texts else ["metadatas"]
        with self._guard("read chunks"):
            result = self._open().get(where=where, include=include, limit=limit)
        documents = result.get("documents") or [""] * len(result["ids"])
        return [Record(i, d or "", dict(m or {}))
                for i, d, m in zip(result["ids"], documents, result["metadatas"], strict=True)]

    def query(self, embedding: np.ndarray, top_k: int, where: Where | None = None) -> list[Record]:
        """The ``top_k`` chunks most similar to ``embedding`` (shape ``(dimension,)``), best
        first, with their cosine similarity as ``score``."""
        with self._guard("search"):
            result = self._open().query(
                query_embeddings=embedding.reshape(1, -1), n_results=top_k, where=where,
                include=["metadatas", "documents", "distances"],
            )
        return [
            Record(i, d or "", dict(m or {}), 1.0 - float(dist))
            for i, d, m, dist in zip(result["ids"][0], result["documents"][0],
                                     result["metadatas"][0], result["distances"][0], strict=True)
        ]

    def collection_metadata(self) -> Mapping[str, Any]:
        """The collection's metadata (embedding model and dimension)."""
        with self._guard("read the collection"):
            return dict(self._open().metadata or {})

    # --- rebuilding -------------------------------------------------------------------------

    def _client_now(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def create_staging(self, suffix: str) -> str:
        """Create an empty collection ``<name>-<suffix>`` for a rebuild with this store's
        embedding model (dropping a leftover of the same name) and return its name."""
        name = f"{self.name}-{suffix}"
        with self._guard("create a staging collection"):
            self._drop(name)
            self._open(name)
        return name

    def drop(self, name: str) -> None:
        """Delete collection ``name`` if it exists."""
        with self._guard("delete a collection"):
            self._drop(name)

    def _drop(self, name: str) -> None:
        client = self._client_now()
        existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name in existing:
            client.delete_collection(name)

    def replace_with(self, staging: str) -> None:
        """Make collection ``staging`` the archive: delete the archive collection and rename
        ``staging`` to its name."""
        with self._guard("swap in the rebuilt collection"), self._lock:
            staged = self._client_now().get_collection(staging, embedding_function=None)
            self._drop(self.name)
            staged.modify(name=self.name)
            self._collection = None

    def all_records_unchecked(self) -> tuple[str | None, list[Record]]:
        """The embedding model recorded on the archive collection and all its chunks, whatever
        model built it (for a rebuild); ``(None, [])`` when the collection does not exist."""
        with self._guard("read the collection for a rebuild"):
            client = self._client_now()
            existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
            if self.name not in existing:
                return None, []
            collection = client.get_collection(self.name, embedding_function=None)
            model = (collection.metadata or {}).get(MODEL_KEY)
            result = collection.get(include=["metadatas", "documents"])
        records = [Record(i, d or "", dict(m or {}))
                   for i, d, m in zip(result["ids"], result["documents"], result["metadatas"],
                                      strict=True)]
        return model, records


def _timed_out(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from or while handling, is an HTTP
    timeout (chromadb re-raises some as ``ValueError``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, httpx.TimeoutException):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _bound_session(server: Any, timeout: httpx.Timeout) -> None:
    """Give chromadb's HTTP session (``FastAPI._session``, an ``httpx.Client`` built with
    ``timeout=None`` in chromadb 1.5) ``timeout``."""
    session = getattr(server, "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = timeout
    else:  # a chromadb upgrade moved it: tests/archive/test_chroma_faults.py fails too
        logger.error("chromadb's HTTP session was not found; Chroma calls have no timeout")


def _bounded_http_client(settings: ArchiveSettings) -> Any:
    """An ``HttpClient`` to ``CHROMA_HOST:CHROMA_PORT`` whose every request (connect, write,
    each read, pool wait) times out after ``CHROMA_TIMEOUT_S`` seconds.

    chromadb 1.5's ``HttpClient`` takes no timeout: it builds its ``httpx.Client`` with
    ``timeout=None`` (``chromadb/api/fastapi.py``) and makes three requests while constructing
    the client (user identity, tenant, database), so a server that accepts connections but
    never answers (paused, overloaded) hangs the caller for good. This builds the same client
    as ``chromadb.HttpClient`` and bounds the session before its first request (user identity),
    and again once built in case a later chromadb calls something else first.

    Raises:
        httpx.TimeoutException, ValueError, Exception: as chromadb's client raises them.
    """
    from chromadb.api.client import Client
    from chromadb.config import Settings as ChromaSettings

    timeout = httpx.Timeout(settings.chroma_timeout_s)

    class BoundedClient(Client):
        def get_user_identity(self) -> Any:
            _bound_session(self._server, timeout)
            return super().get_user_identity()

    client = BoundedClient(settings=ChromaSettings(
        anonymized_telemetry=False, chroma_api_impl="chromadb.api.fastapi.FastAPI",
        chroma_server_host=settings.chroma_host, chroma_server_http_port=settings.chroma_port,
        chroma_server_ssl_enabled=False))
    _bound_session(client._server, timeout)
    return client
