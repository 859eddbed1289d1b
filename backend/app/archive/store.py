"""The Chroma store: the only module that imports ``chromadb``.

Embedded by default (a ``PersistentClient`` in ``ARCHIVE_DB_PATH``, which one process at a
time may open: it holds the lock file ``writer-assistant.lock`` there); with ``CHROMA_HOST``
set, an ``HttpClient`` to a Chroma server (``chroma run``), which any number of processes may
share. Either way the collections are created without an embedding function: every embedding
is computed by :mod:`app.archive.embeddings`, and Chroma's default embedding function (which
downloads a model) is never used.

Every failure of Chroma (server down, directory unwritable or full, a corrupt store) becomes
:class:`~app.errors.ArchiveUnavailable`; the client is rebuilt on the next call, so a server
that comes back is picked up without a restart. Every request to a server times out after
``CHROMA_TIMEOUT_S``, so a server that hangs (paused, wedged) fails calls instead of
freezing them.

Commits. A write leaves each file at its old or its new version, never both and never
neither, and a rebuild never loses the archive, whichever step a crash or a failure
interrupts. Chroma changes one record atomically, so each change turns on one record of a
small catalog collection, ``<collection>.catalog`` (one-dimensional dummy embeddings):

- ``live`` names the chunk collection that is the archive (``<collection>`` until the first
  rebuild, then ``<collection>.g<hex>``) and the retired ones still to drop;
- a *write* record lists revisions readers must not see (a chunk's ``revision`` metadata,
  ``<file key>-<version>``): the one being written, until the single upsert that commits it
  lists the revisions it replaces instead;
- a *build* record names a collection being rebuilt; pointing ``live`` at it commits the
  rebuild.

Readers read the catalog, then filter hidden revisions out; in one process a read-write lock
keeps a commit from falling between the two (processes sharing a Chroma server have no such
lock: a commit there may fall in the milliseconds between a reader's two calls).
:meth:`ChromaStore.recover` (on opening and before each write) finishes or undoes what an
interrupted writer left: it deletes hidden revisions and drops collections nothing points to.
An archive from before the catalog (chunks without ``revision``) is migrated by its first
recovery.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from filelock import FileLock, Timeout

from app.config import ArchiveSettings
from app.errors import ArchiveUnavailable, EmbeddingModelMismatch, WriterAssistantError

logger = logging.getLogger(__name__)

#: Collection metadata keys that record the embedding model.
MODEL_KEY, DIMENSION_KEY = "embedding_model", "embedding_dimension"
#: Chunk metadata key: the revision a chunk belongs to, ``<file key>-<version>``.
REVISION_KEY = "revision"
#: Chunk metadata key of the author's voice samples (``True`` on each of their chunks;
#: absent on story chunks).
VOICE_KEY = "voice"
#: Suffix of the catalog collection's name.
CATALOG_SUFFIX = ".catalog"
#: The lock file an embedded store holds in ARCHIVE_DB_PATH while it is open.
LOCK_FILE = "writer-assistant.lock"
#: With a Chroma server, seconds after which another process's unfinished write or rebuild
#: (its record not refreshed) is taken for dead and recovered; this process's own leftovers,
#: and every leftover in an embedded store (one process at a time), are recovered at once.
STALE_SECONDS = 3600.0
#: Seconds between refreshes of a running rebuild's record.
_HEARTBEAT_SECONDS = 60.0
_LIVE = "live"
_PROCESS_TOKEN = uuid.uuid4().hex[:12]

Metadata = dict[str, str | int | float | bool]
Where = dict[str, Any]

IN_USE = (
    "The archive directory is in use by another process (a running server or another "
    "writer-assistant command); Chroma's embedded store takes one process at a time. Stop "
    "that process, or ingest through the running server (POST /api/v1/archive/files), or run "
    "a Chroma server (`chroma run`) and set CHROMA_HOST for both."
)


DISK_FULL = (
    "The archive's disk filled up during a write. What was archived is intact, but Chroma's "
    "embedded store cannot be trusted again in this process (it may hang): free space, then "
    "restart the server or command."
)
#: Embedded directories whose store failed with a full disk in this process (SQLite's
#: "database or disk is full"): every later call is refused (DISK_FULL) instead of risking a
#: hang inside Chroma.
_DISK_FULL: set[str] = set()


def revision_of(chunk_id: str) -> str:
    """The revision of chunk id ``<file key>-<version>-<index>``: ``<file key>-<version>``."""
    return chunk_id.rsplit("-", 1)[0]


def _owner() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{_PROCESS_TOKEN}"


def _names(value: object) -> list[str]:
    """A JSON list of names stored in a catalog record."""
    return [str(v) for v in json.loads(str(value or "[]"))]


def _visible(where: Where | None, hidden: frozenset[str]) -> Where | None:
    """``where`` less the chunks of the ``hidden`` revisions."""
    if not hidden:
        return where
    clause: Where = {REVISION_KEY: {"$nin": sorted(hidden)}}
    return clause if where is None else {"$and": [where, clause]}


def superseded(ids: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """Revisions that lose to another revision of the same file: where a file has several
    (an archive written before commits existed, interrupted between writing a new version
    and deleting the old), the newest complete one (all its chunks there) wins. A file with
    no complete revision keeps them all."""
    files: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for chunk_id, stored in zip(ids, metadatas, strict=True):
        meta = stored or {}
        revision = str(meta.get(REVISION_KEY) or revision_of(chunk_id))
        files.setdefault(str(meta.get("file")), {}).setdefault(revision, []).append(meta)
    losers: list[str] = []
    for revisions in files.values():
        complete: dict[str, str] = {}
        for revision, metas in revisions.items():
            first = next((m for m in metas if m.get("chunk_index") == 0), None)
            if first is not None and first.get("file_chunks") == len(metas):
                complete[revision] = str(first.get("ingested_at", ""))
        if len(revisions) > 1 and complete:
            winner = max(complete, key=lambda r: (complete[r], r))
            losers += [r for r in revisions if r != winner]
    return sorted(losers)


class _DirectoryLocks:
    """Inter-process locks on embedded archive directories: one per directory per process,
    shared by the stores of the process and released when the last of them closes."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[str, tuple[FileLock | None, int]] = {}

    def acquire(self, directory: Path) -> str:
        """Lock ``directory`` (created when missing) for this process; returns its key.

        Raises:
            ArchiveUnavailable: another process holds it.
            OSError: the directory cannot be created, or is writable but cannot be locked.
        """
        directory.mkdir(parents=True, exist_ok=True)
        key = str(directory.resolve())
        with self._mutex:
            lock, users = self._held.get(key, (None, 0))
            if not users:
                lock = FileLock(os.path.join(key, LOCK_FILE), timeout=0, thread_local=False)
                try:
                    lock.acquire()
                except Timeout as error:  # before OSError: Timeout is a TimeoutError
                    raise ArchiveUnavailable(IN_USE, param="ARCHIVE_DB_PATH") from error
                except OSError:
                    if os.access(key, os.W_OK):
                        raise
                    # Nobody can write a read-only directory, so there is nothing to guard;
                    # whether Chroma can open it is Chroma's to say.
                    logger.warning("archive directory %s is read-only; opened without its lock",
                                   key)
                    lock = None
            self._held[key] = (lock, users + 1)
        return key

    def release(self, key: str) -> None:
        """Drop one use of the lock on ``key``; the last one unlocks the directory."""
        with self._mutex:
            lock, users = self._held.pop(key, (None, 0))
            if users > 1:
                self._held[key] = (lock, users - 1)
                return
        if lock is not None:
            lock.release()


_DIRECTORY_LOCKS = _DirectoryLocks()


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = self._waiting = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not (self._writing or self._waiting))
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._waiting += 1
            self._condition.wait_for(lambda: not (self._writing or self._readers))
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


@dataclass(frozen=True)
class Record:
    """A stored chunk: id, text, metadata and (when asked for) similarity to a query.

    ``score`` is cosine similarity in [-1, 1] (1 - Chroma's cosine distance).
    """

    id: str
    text: str
    metadata: Metadata
    score: float | None = None


@dataclass(frozen=True)
class _Catalog:
    """The catalog as read: the live collection, the revisions readers must not see, every
    record by id, and whether the archive has been migrated (the ``live`` record exists)."""

    live: str
    hidden: frozenset[str]
    records: dict[str, dict[str, Any]]
    migrated: bool


class ChromaStore:
    """The archive's chunks with their embeddings, in the live collection the catalog names.

    Thread-safe: calls may come from FastAPI's worker threads at once. Writers (one at a time:
    the caller serialises them) go :meth:`recover`, :meth:`begin`, :meth:`upsert`...,
    :meth:`commit`, :meth:`settle`; a rebuild :meth:`recover`, :meth:`begin_build`,
    :meth:`upsert`... into the new collection, :meth:`commit_build`, :meth:`settle_build`.
    """

    def __init__(self, settings: ArchiveSettings, model: str, dimension: int,
                 collection: str | None = None) -> None:
        self.settings = settings
        self.name = collection or settings.collection
        self.catalog_name = f"{self.name}{CATALOG_SUFFIX}"
        self.model = model
        self.dimension = dimension
        self._client: Any = None
        self._catalog_collection: Any = None
        self._collections: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._timed_out_at: float | None = None  # monotonic time of the last connect timeout
        self._commits = _ReadWriteLock()
        self._directory: str | None = None  # the directory locked, while it is
        self._disk = None if settings.chroma_host else str(Path(settings.db_path).resolve())
        self._heartbeat = 0.0

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
        """Turn Chroma's failures during ``action`` into ArchiveUnavailable; refuse at once
        when this directory's disk filled up earlier in this process."""
        if self._disk in _DISK_FULL:
            raise ArchiveUnavailable(DISK_FULL, param="ARCHIVE_DB_PATH")
        try:
            yield
        except WriterAssistantError:
            raise
        except Exception as error:
            logger.warning("archive store failed to %s at %s: %s: %s", action, self.location,
                           type(error).__name__, error)
            with self._lock:
                self._client = self._catalog_collection = None
                self._collections = {}
            if self._disk is not None and "disk is full" in str(error):
                # Chroma 1.5's embedded store can hang on any later call in this process.
                logger.error("archive disk full at %s: the store is closed until a restart",
                             self.location)
                _DISK_FULL.add(self._disk)
                raise ArchiveUnavailable(DISK_FULL, param="ARCHIVE_DB_PATH") from error
            # Chroma's own text can hold paths: it goes to the log above, not to clients.
            raise ArchiveUnavailable(
                f"The archive store ({self.mode}) failed to {action} "
                f"({type(error).__name__}). Check that Chroma is running and its directory is "
                "writable and not full, then retry.",
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

    def _client_now(self) -> Any:
        with self._lock:
            if self._client is None:
                if self.mode == "embedded" and self._directory is None:
                    self._directory = _DIRECTORY_LOCKS.acquire(Path(self.settings.db_path))
                self._client = self._connect()
            return self._client

    def _model_metadata(self) -> Metadata:
        return {MODEL_KEY: self.model, DIMENSION_KEY: self.dimension}

    def _collection(self, name: str, *, create: bool = False, check: bool = True) -> Any:
        """Collection ``name``: ``None`` when missing, unless ``create`` (then made for this
        embedding model); checked against this embedding model unless ``check`` is false."""
        from chromadb.errors import NotFoundError

        with self._lock:
            collection = self._collections.get(name)
            if collection is None:
                client = self._client_now()
                if create:
                    collection = client.get_or_create_collection(
                        name, embedding_function=None, metadata=self._model_metadata(),
                        configuration={"hnsw": {"space": "cosine"}},
                    )
                else:
                    try:
                        collection = client.get_collection(name, embedding_function=None)
                    except NotFoundError:
                        return None
                self._collections[name] = collection
        if check:
            self._check_model(collection)
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
            f"The archive collection {self.name!r} was built with the embedding model "
            f"{model!r} ({dimension} dimensions), but this server embeds with {self.model!r} "
            f"({self.dimension} dimensions). Run `writer-assistant reindex` to rebuild the "
            f"archive with {self.model!r}, or set EMBEDDING_MODEL back to {model!r}.",
            param="EMBEDDING_MODEL", collection_model=model, collection_dimension=dimension,
            server_model=self.model, server_dimension=self.dimension,
        )

    def _drop(self, name: str) -> None:
        client = self._client_now()
        existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name in existing:
            client.delete_collection(name)
        with self._lock:
            self._collections.pop(name, None)

    # --- the catalog ----------------------------------------------------------------------

    def _catalog(self, *, create: bool = False) -> Any:
        """The catalog collection (``None`` when missing, unless ``create``)."""
        from chromadb.errors import NotFoundError

        with self._lock:
            if self._catalog_collection is None:
                client = self._client_now()
                if create:
                    self._catalog_collection = client.get_or_create_collection(
                        self.catalog_name, embedding_function=None,
                        metadata={"writer_assistant": "catalog"})
                else:
                    try:
                        self._catalog_collection = client.get_collection(
                            self.catalog_name, embedding_function=None)
                    except NotFoundError:
                        return None
            return self._catalog_collection

    def _read_catalog(self) -> _Catalog:
        catalog = self._catalog()
        if catalog is None:
            return _Catalog(self.name, frozenset(), {}, migrated=False)
        result = catalog.get(include=["metadatas"])
        records = {i: dict(m or {}) for i, m in zip(result["ids"], result["metadatas"],
                                                    strict=True)}
        live_record = records.get(_LIVE)
        live = str(live_record["collection"]) if live_record else self.name
        hidden = {name for meta in records.values()
                  if meta.get("kind") == "write" and meta.get("collection") == live
                  for name in _names(meta.get("hidden"))}
        return _Catalog(live, frozenset(hidden), records, migrated=live_record is not None)

    def _put(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Upsert catalog records (one call: one record is one atomic write)."""
        self._catalog(create=True).upsert(
            ids=list(records), embeddings=np.ones((len(records), 1), dtype=np.float32),
            metadatas=[dict(m) for m in records.values()])

    # --- reads ------------------------------------------------------------------------------

    @contextmanager
    def _reading(self, action: str) -> Iterator[tuple[Any, frozenset[str]]]:
        """The live collection (``None`` while there is none) and the revisions to hide,
        steady for the block against this process's commits."""
        with self._guard(action), self._commits.reading():
            catalog = self._read_catalog()
            yield self._collection(catalog.live), catalog.hidden

    def check(self) -> None:
        """Connect and open the live collection now (startup, readiness), raising what a call
        would raise. Creates nothing.

        Raises:
            ArchiveUnavailable: Chroma cannot be reached or opened, or the embedded directory
                is in use by another process.
            EmbeddingModelMismatch: the collection was built with another embedding model.
        """
        with self._reading("open the collection"):
            pass

    def ping(self) -> None:
        """Check now that the store answers (readiness): read the catalog and count the live
        collection's chunks, round trips to the server bounded by ``CHROMA_TIMEOUT_S`` (the
        embedded store: reads of its database). Blocks: call it off the event loop.

        Raises:
            ArchiveUnavailable: Chroma did not answer, or failed.
            EmbeddingModelMismatch: the collection was built with another embedding model.
        """
        with self._reading("answer a health check") as (collection, _hidden):
            if collection is not None:  # reading the catalog was a round trip already
                collection.count()

    def close(self) -> None:
        """Drop the Chroma client: an embedded store releases its SQLite files (once no other
        store in the process uses the same directory) and its directory lock, a server's its
        HTTP connections. A later call connects again. Never raises: a failure to close is
        logged."""
        with self._lock:
            client, self._client, self._catalog_collection = self._client, None, None
            self._collections = {}
            directory, self._directory = self._directory, None
        try:
            if client is not None:
                client.close()
        except Exception as error:  # noqa: BLE001 - chromadb raises many types; shutdown goes on
            logger.warning("closing the archive store at %s failed: %s: %s", self.location,
                           type(error).__name__, error)
        finally:
            if directory is not None:
                _DIRECTORY_LOCKS.release(directory)

    def max_batch_size(self) -> int:
        """Most records one write may carry (Chroma's limit)."""
        with self._guard("read its batch limit"):
            return int(self._client_now().get_max_batch_size())

    def count(self) -> int:
        """Chunks in the archive (visible ones)."""
        with self._reading("count chunks") as (collection, hidden):
            if collection is None:
                return 0
            if not hidden:
                return int(collection.count())
            return len(collection.get(where=_visible(None, hidden), include=[])["ids"])

    def ids(self, where: Where) -> list[str]:
        """Ids of the chunks matching ``where``."""
        with self._reading("list chunk ids") as (collection, hidden):
            if collection is None:
                return []
            return list(collection.get(where=_visible(where, hidden), include=[])["ids"])

    def get(self, where: Where | None = None, *, texts: bool = True,
            limit: int | None = None) -> list[Record]:
        """Chunks matching ``where`` (all when ``None``), in no particular order."""
        include = ["metadatas", "documents"] if texts else ["metadatas"]
        with self._reading("read chunks") as (collection, hidden):
            if collection is None:
                return []
            result = collection.get(where=_visible(where, hidden), include=include,
                                    limit=limit)
        documents = result.get("documents") or [""] * len(result["ids"])
        return [Record(i, d or "", dict(m or {}))
                for i, d, m in zip(result["ids"], documents, result["metadatas"], strict=True)]

    def get_with_embeddings(self, where: Where) -> tuple[list[Record], np.ndarray]:
        """Chunks matching ``where`` with their texts, in no particular order, and their
        embeddings (shape ``(len(records), dimension)``, in the same order)."""
        with self._reading("read chunks") as (collection, hidden):
            if collection is None:
                return [], np.zeros((0, self.dimension), dtype=np.float32)
            result = collection.get(where=_visible(where, hidden),
                                    include=["metadatas", "documents", "embeddings"])
        records = [Record(i, d or "", dict(m or {}))
                   for i, d, m in zip(result["ids"], result["documents"], result["metadatas"],
                                      strict=True)]
        vectors = np.asarray(result["embeddings"], dtype=np.float32)
        return records, vectors.reshape(len(records), self.dimension)

    def query(self, embedding: np.ndarray, top_k: int, where: Where | None = None) -> list[Record]:
        """The ``top_k`` chunks most similar to ``embedding`` (shape ``(dimension,)``), best
        first, with their cosine similarity as ``score``."""
        with self._reading("search") as (collection, hidden):
            if collection is None:
                return []
            result = collection.query(
                query_embeddings=embedding.reshape(1, -1), n_results=top_k,
                where=_visible(where, hidden), include=["metadatas", "documents", "distances"],
            )
        return [
            Record(i, d or "", dict(m or {}), 1.0 - float(dist))
            for i, d, m, dist in zip(result["ids"][0], result["documents"][0],
                                     result["metadatas"][0], result["distances"][0], strict=True)
        ]

    def collection_metadata(self) -> Mapping[str, Any]:
        """The live collection's metadata (embedding model and dimension); empty while there
        is none."""
        with self._reading("read the collection") as (collection, _):
            return dict(collection.metadata or {}) if collection is not None else {}

    def all_records_unchecked(self) -> tuple[str | None, list[Record]]:
        """The embedding model recorded on the live collection and all its chunks, whatever
        model built it (for a rebuild); ``(None, [])`` when there is no collection."""
        with self._guard("read the collection for a rebuild"), self._commits.reading():
            catalog = self._read_catalog()
            collection = self._collection(catalog.live, check=False)
            if collection is None:
                return None, []
            model = (collection.metadata or {}).get(MODEL_KEY)
            result = collection.get(where=_visible(None, catalog.hidden),
                                    include=["metadatas", "documents"])
        records = [Record(i, d or "", dict(m or {}))
                   for i, d, m in zip(result["ids"], result["documents"], result["metadatas"],
                                      strict=True)]
        return model, records

    # --- writes -----------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, texts: Sequence[str],
               metadatas: Sequence[Metadata], *, collection: str | None = None) -> None:
        """Write chunks (one call; see :meth:`max_batch_size`) into the live collection (made
        when missing) or into ``collection`` (a rebuild's, from :meth:`begin_build`).
        ``embeddings`` has shape ``(len(ids), dimension)``; each metadata carries
        ``revision``."""
        if embeddings.shape != (len(ids), self.dimension):
            raise ValueError(f"embeddings of shape {embeddings.shape}, expected "
                             f"({len(ids)}, {self.dimension})")
        with self._guard("write chunks"):
            if collection is not None:
                self._beat(collection)
            target = self._collection(collection or self._read_catalog().live, create=True)
            target.upsert(ids=list(ids), embeddings=embeddings, documents=list(texts),
                          metadatas=list(metadatas))

    def delete(self, *, ids: Sequence[str] | None = None, where: Where | None = None) -> None:
        """Delete chunks of the live collection by id or by metadata filter (one call)."""
        with self._guard("delete chunks"):
            target = self._collection(self._read_catalog().live)
            if target is None:
                return
            if ids is not None:
                if ids:
                    target.delete(ids=list(ids))
            elif where is not None:
                target.delete(where=where)

    def begin(self, revision: str) -> str:
        """Start writing ``revision`` into the live collection (made when missing), hidden
        from readers until :meth:`commit`. Returns the write's id.

        Raises:
            ArchiveUnavailable: the store failed (nothing was written).
            EmbeddingModelMismatch: the live collection holds another model's embeddings.
        """
        write = f"w-{uuid.uuid4().hex[:16]}"
        with self._guard("begin a write"):
            live = self._read_catalog().live
            self._collection(live, create=True)
            with self._commits.writing():
                self._put({write: {"kind": "write", "collection": live, "staged": revision,
                                   "hidden": json.dumps([revision]), "owner": _owner(),
                                   "updated_at": time.time()}})
        return write

    def commit(self, write: str, replaced: Iterable[str]) -> None:
        """The commit point of ``write``: its revision becomes visible and the ``replaced``
        revisions hidden, in one atomic write. :meth:`settle` then deletes them.

        Raises:
            ArchiveUnavailable: the store failed (whether the commit happened is for
                :meth:`settle` to find out), or a recovery undid the write meanwhile.
        """
        with self._guard("commit a write"):
            meta = self._read_catalog().records.get(write)
            if meta is None:
                raise ArchiveUnavailable("The archive write was undone by a recovery in "
                                         "another process; retry.")
            hidden = sorted(set(replaced) - {str(meta["staged"])})
            with self._commits.writing():
                self._put({write: {**meta, "hidden": json.dumps(hidden),
                                   "updated_at": time.time()}})

    def begin_build(self) -> str:
        """Create a new, empty collection for a rebuild with this store's embedding model and
        return its name; readers go on reading the live one until :meth:`commit_build`.

        Raises:
            ArchiveUnavailable: the store failed.
        """
        name = f"{self.name}.g{uuid.uuid4().hex[:10]}"
        with self._guard("create a collection for the rebuild"):
            self._put({f"b-{name}": {"kind": "build", "collection": name, "owner": _owner(),
                                     "updated_at": time.time()}})
            self._heartbeat = time.monotonic()
            self._collection(name, create=True)
        return name

    def _beat(self, name: str) -> None:
        """Refresh the record of the rebuild into ``name`` now and then (server mode: other
        processes leave a live rebuild alone)."""
        if time.monotonic() - self._heartbeat < _HEARTBEAT_SECONDS:
            return
        self._heartbeat = time.monotonic()
        meta = self._read_catalog().records.get(f"b-{name}")
        if meta is not None:
            self._put({f"b-{name}": {**meta, "updated_at": time.time()}})

    def commit_build(self, name: str) -> None:
        """The commit point of a rebuild: collection ``name`` becomes the live one in one
        atomic write; the one it replaces is retired (:meth:`settle_build` drops it).

        Raises:
            ArchiveUnavailable: the store failed (whether the commit happened is for
                :meth:`settle_build` to find out), or a recovery undid the rebuild meanwhile.
        """
        with self._guard("swap in the rebuilt collection"):
            catalog = self._read_catalog()
            if f"b-{name}" not in catalog.records:
                raise ArchiveUnavailable("The rebuild was undone by a recovery in another "
                                         "process; run it again.")
            live_record = catalog.records.get(_LIVE, {})
            retired = [r for r in dict.fromkeys([*_names(live_record.get("retired")),
                                                 catalog.live]) if r != name]
            with self._commits.writing():
                self._put({_LIVE: {"kind": "live", "collection": name,
                                   "retired": json.dumps(retired)}})

    def settle(self, write: str) -> bool:
        """Finish ``write`` (from :meth:`begin`, committed or not): delete the chunks of the
        revisions it hides (the replaced ones, or its own when it never committed), then its
        record. Returns whether it had committed (``False`` when there is no such write).

        Raises:
            ArchiveUnavailable: the store failed; readers still see one version of each file
                and the next :meth:`recover` finishes the work.
        """
        with self._guard("finish a write"):
            catalog = self._read_catalog()
            meta = catalog.records.get(write)
            if meta is None:
                return False
            return self._settle(write, meta, catalog.live)

    def settle_build(self, name: str) -> bool:
        """Finish the rebuild into ``name``: when it committed, drop the retired collection;
        when not, drop ``name``. Returns whether it had committed. Raises as :meth:`settle`."""
        with self._guard("finish the rebuild"):
            catalog = self._read_catalog()
            meta = catalog.records.get(f"b-{name}")
            committed = catalog.live == name
            if meta is not None:
                committed = self._settle(f"b-{name}", meta, catalog.live)
            self._drop_retired()
            return committed

    def _settle(self, record: str, meta: Mapping[str, Any], live: str) -> bool:
        name = str(meta.get("collection"))
        if meta.get("kind") == "build":
            committed = name == live
            if not committed:
                self._drop(name)
        else:
            hidden = _names(meta.get("hidden"))
            committed = meta.get("staged") not in hidden
            target = self._collection(name, check=False) if name == live and hidden else None
            if target is not None:
                target.delete(where={REVISION_KEY: {"$in": hidden}})
        self._catalog(create=True).delete(ids=[record])
        return committed

    def _drop_retired(self) -> None:
        catalog = self._read_catalog()
        live_record = catalog.records.get(_LIVE)
        retired = _names(live_record.get("retired")) if live_record else []
        if not live_record or not retired:
            return
        for name in retired:
            if name != catalog.live:
                self._drop(name)
        self._put({_LIVE: {**live_record, "retired": "[]"}})

    # --- recovery ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what interrupted writes and rebuilds left (see the module notes),
        after migrating an archive from before the catalog. Run on opening and before each
        write. Embedded, every leftover is recovered (one process at a time); with a Chroma
        server only this process's and those idle for ``STALE_SECONDS`` (another process may
        still be writing).

        Raises:
            ArchiveUnavailable: the store failed; readers still see one version of each file
                and the next recovery goes on.
        """
        with self._guard("recover unfinished writes"):
            catalog = self._read_catalog()
            if not catalog.migrated:
                self._migrate()
                catalog = self._read_catalog()
            now, owner = time.time(), _owner()
            for record, meta in catalog.records.items():
                if meta.get("kind") not in ("write", "build"):
                    continue
                if (self.mode == "embedded" or meta.get("owner") == owner
                        or now - float(meta.get("updated_at", 0)) > STALE_SECONDS):
                    logger.warning("archive %s: finishing an interrupted %s (%s)", self.name,
                                   meta["kind"], record)
                    self._settle(record, meta, catalog.live)
            self._drop_retired()

    def _migrate(self) -> None:
        """Make the catalog of an archive from before it: the live collection is
        ``<collection>``, or the copy an interrupted re-index of that time left under
        ``<collection>-reindex`` when it is the only one with chunks (then kept, never
        dropped); chunks get their ``revision``; where a file has two versions, the older one
        is hidden (and deleted by the recovery that follows)."""
        live = self.name
        primary = self._collection(self.name, check=False)
        leftover = self._collection(f"{self.name}-reindex", check=False)
        retired: list[str] = []
        if leftover is not None:
            if leftover.count() and (primary is None or primary.count() == 0):
                logger.warning("archive %s: adopting %s, the copy an interrupted re-index left, "
                               "as the archive", self.name, leftover.name)
                live, retired = leftover.name, [self.name] if primary is not None else []
            else:
                logger.warning("archive %s: keeping %s, left by an interrupted re-index; delete "
                               "it once the archive is checked", self.name, leftover.name)
        records: dict[str, dict[str, Any]] = {
            _LIVE: {"kind": "live", "collection": live, "retired": json.dumps(retired)}}
        collection = self._collection(live, check=False)
        if collection is not None:
            result = collection.get(include=["metadatas"])
            untagged = [(i, revision_of(i)) for i, m in zip(result["ids"], result["metadatas"],
                                                            strict=True)
                        if not (m or {}).get(REVISION_KEY)]
            batch = max(1, min(self.max_batch_size(), 1000))
            for first in range(0, len(untagged), batch):
                part = untagged[first:first + batch]
                collection.update(ids=[i for i, _ in part],
                                  metadatas=[{REVISION_KEY: r} for _, r in part])
            losers = superseded(result["ids"], result["metadatas"])
            if losers:
                logger.warning("archive %s: hiding %d superseded versions of files",
                               self.name, len(losers))
                records[f"w-{uuid.uuid4().hex[:16]}"] = {
                    "kind": "write", "collection": live, "staged": "",
                    "hidden": json.dumps(losers), "owner": _owner(), "updated_at": time.time()}
        self._put(records)

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
