"""The archive service: the embedding model and the store together, and its startup state.

:class:`Archive` is what the API, the CLI and the agents' retrieval hook use. Its methods
block (embedding, Chroma I/O): call them from a worker thread in async code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from app.archive.chunking import reconstruct
from app.archive.documents import Document, archive_name, parse_document
from app.archive.embeddings import Embedder, set_threads
from app.archive.ingest import Prepared, Progress, ingest_document, prepare, rebuild
from app.archive.retrieval import STORY_ONLY, VOICE_ONLY, search
from app.archive.store import ChromaStore
from app.config import ArchiveSettings
from app.errors import (
    ArchiveFileNotFound,
    ArchiveUnavailable,
    DocumentTooLarge,
    EmbeddingModelMismatch,
)
from app.observability.metrics import Metrics
from app.schemas.archive import (
    ArchiveFilters,
    ArchiveStats,
    DeleteResult,
    FileInfo,
    FileList,
    FileText,
    IngestResult,
    Passage,
    ReindexResult,
)
from app.tenancy import LOCAL_TENANT

logger = logging.getLogger(__name__)

ArchiveStatus = Literal["disabled", "loading", "ready", "error"]


class Archive:
    """The story archive: search, files, ingest and rebuild over one Chroma collection.

    Writes (ingest, delete, rebuild) are serialised by a lock; reads run concurrently.
    Each operation's latency goes to ``metrics``.
    """

    def __init__(self, settings: ArchiveSettings, embedder: Embedder, store: ChromaStore,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.metrics = metrics
        self._write_lock = threading.Lock()
        self._tenants: dict[str, Archive] = {}
        self._tenants_lock = threading.Lock()

    def for_tenant(self, tenant: str) -> Archive:
        """The archive of ``tenant``: its own Chroma collection (``t-<tenant>-<collection>``),
        sharing this archive's embedding model and settings. The local tenant (API keys off)
        uses the collection itself. One tenant's calls can never reach another's files.
        """
        if tenant == LOCAL_TENANT:
            return self
        with self._tenants_lock:
            archive = self._tenants.get(tenant)
            if archive is None:
                store = ChromaStore(self.settings, self.embedder.name, self.embedder.dimension,
                                    collection=f"t-{tenant}-{self.settings.collection}")
                archive = self._tenants[tenant] = Archive(self.settings, self.embedder, store,
                                                          self.metrics)
            return archive

    @classmethod
    def open(cls, settings: ArchiveSettings, metrics: Metrics,
             embedder: Embedder | None = None) -> Archive:
        """Load the embedding model (unless given), set its threads (``EMBEDDING_THREADS``)
        and connect the store.

        Opening recovers what an interrupted write left in the store
        (:meth:`app.archive.store.ChromaStore.recover`). A store that cannot be reached now
        (or, embedded, whose directory another process holds), or that holds another model's
        embeddings, is logged and not fatal: each call retries it and reports the failure
        (503 or 409).

        Raises:
            ArchiveUnavailable: the embedding model cannot be loaded, or ARCHIVE_CHUNK_TOKENS
                is above what it embeds.
        """
        embedder = embedder or Embedder.load(settings.embedding_model)
        set_threads(settings.embedding_threads)
        if settings.chunk_tokens > embedder.max_tokens:
            raise ArchiveUnavailable(
                f"ARCHIVE_CHUNK_TOKENS is {settings.chunk_tokens}, but the embedding "
                f"model {embedder.name} embeds at most {embedder.max_tokens} tokens; lower it.",
                param="ARCHIVE_CHUNK_TOKENS",
            )
        archive = cls(settings, embedder, ChromaStore(settings, embedder.name, embedder.dimension),
                      metrics)
        try:
            archive.store.recover()
            archive.store.check()
        except (ArchiveUnavailable, EmbeddingModelMismatch) as error:
            logger.warning("archive store not usable yet: %s", error.message)
        return archive

    def close(self) -> None:
        """Close this archive's store and those of the tenants it opened
        (:meth:`app.archive.store.ChromaStore.close`); the embedding model holds nothing to
        close. A later call reconnects. Never raises."""
        with self._tenants_lock:
            tenants = list(self._tenants.values())
        for archive in tenants:
            archive.store.close()
        self.store.close()

    # --- reads ------------------------------------------------------------------------------

    def search(self, query: str, top_k: int | None = None,
               filters: ArchiveFilters | None = None) -> list[Passage]:
        """The ``top_k`` (default ``ARCHIVE_TOP_K``) passages closest to ``query``, best
        first, within ``filters``. Raises as :func:`app.archive.retrieval.search`."""
        with self.metrics.archive_operation("search"):
            return search(self.store, self.embedder, query,
                          top_k or self.settings.top_k, filters)

    def context_passages(self, query: str) -> list[Passage]:
        """Story passages for an agent's context (never the author's voice samples): the top
        ``ARCHIVE_TOP_K`` at or above ``ARCHIVE_MIN_SCORE``."""
        with self.metrics.archive_operation("search"):
            found = search(self.store, self.embedder, query, self.settings.top_k,
                           scope=STORY_ONLY)
        return [p for p in found if p.score >= self.settings.min_score]

    def voice_exemplars(self, query: str, top_k: int) -> list[Passage]:
        """The ``top_k`` passages of the author's voice samples closest to ``query``, best
        first (style exemplars for a prose task)."""
        with self.metrics.archive_operation("search"):
            return search(self.store, self.embedder, query, top_k, scope=VOICE_ONLY)

    def voice_signature(self) -> str:
        """What the voice profile is built from: the voice files and their versions, as one
        string (empty when no file is tagged voice)."""
        records = self.store.get({"$and": [{"chunk_index": 0}, VOICE_ONLY]}, texts=False)
        return "|".join(sorted(f"{r.metadata['file']}@{r.metadata.get('version')}"
                               for r in records))

    def voice_passages(self) -> tuple[list[str], list[str], np.ndarray]:
        """The voice files (sorted), their chunks' texts in file and chunk order, and those
        chunks' embeddings (shape ``(len(texts), dimension)``, unit-length rows)."""
        records, embeddings = self.store.get_with_embeddings(VOICE_ONLY)
        order = sorted(range(len(records)), key=lambda i: (
            str(records[i].metadata["file"]), int(records[i].metadata["chunk_index"])))
        files = sorted({str(r.metadata["file"]) for r in records})
        return files, [records[i].text for i in order], embeddings[order]

    def files(self) -> FileList:
        """Every archived file, sorted by name."""
        with self.metrics.archive_operation("files"):
            return self._files()

    def _files(self) -> FileList:
        infos = []
        for record in self.store.get({"chunk_index": 0}, texts=False):
            meta = record.metadata
            infos.append(FileInfo(
                file=str(meta["file"]), title=str(meta["title"]), format=str(meta["format"]),
                chars=int(meta["file_chars"]), chunks=int(meta["file_chunks"]),
                chapters=json.loads(str(meta.get("chapters_json", "[]"))),
                sha256=str(meta["file_sha256"]), ingested_at=str(meta["ingested_at"]),
                voice=bool(meta.get("voice", False)),
            ))
        return FileList(files=sorted(infos, key=lambda i: i.file))

    def file_text(self, file: str) -> FileText:
        """The text of ``file`` rebuilt from its chunks (exactly the archived text).

        Raises:
            ArchiveFileNotFound: no such file.
        """
        with self.metrics.archive_operation("file_text"):
            return self._file_text(file)

    def _file_text(self, file: str) -> FileText:
        records = self.store.get({"file": file})
        if not records:
            raise ArchiveFileNotFound(f"The archive has no file named {file!r}.", param="file")
        records.sort(key=lambda r: int(r.metadata["chunk_index"]))
        text = reconstruct([(int(r.metadata["start"]), int(r.metadata["own_start"]), r.text)
                            for r in records])
        meta = records[0].metadata
        if len(text) != int(meta["file_chars"]):
            logger.error("archive file %s rebuilt to %d characters, expected %s", file,
                         len(text), meta["file_chars"])
        return FileText(file=file, title=str(meta["title"]), chars=len(text),
                        sha256=str(meta["file_sha256"]), text=text)

    def stats(self) -> ArchiveStats:
        """Counts and configuration of the archive."""
        with self.metrics.archive_operation("stats"):
            files = self._files().files
            return ArchiveStats(
                mode=self.store.mode, location=self.store.public_location,
                collection=self.store.name,
                embedding_model=self.embedder.name, embedding_dimension=self.embedder.dimension,
                files=len(files), chunks=self.store.count(), chars=sum(f.chars for f in files),
                chunk_tokens=self.settings.chunk_tokens,
                chunk_overlap_tokens=self.settings.chunk_overlap_tokens,
            )

    # --- writes -----------------------------------------------------------------------------

    def ingest_bytes(self, name: str, data: bytes,
                     progress: Progress | None = None, *, voice: bool = False) -> IngestResult:
        """Parse and archive a file's bytes under its name (a relative path such as
        ``drafts/notes.md`` is kept: :func:`app.archive.documents.archive_name`), replacing an
        earlier version; ``voice``: tag it as the author's own writing (:mod:`app.voice`).

        Raises:
            DocumentTooLarge: above ``ARCHIVE_MAX_UPLOAD_BYTES``, or a ``.docx`` that unpacks
                to more than ``ARCHIVE_MAX_EXPANDED_BYTES`` (see
                :func:`app.archive.documents.parse_document`).
            UnsupportedDocument, InvalidDocument: the file cannot be archived.
            ArchiveUnavailable, EmbeddingModelMismatch: the store cannot take it.
        """
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise DocumentTooLarge(
                f"{archive_name(name)!r} is {len(data)} bytes; the archive takes files up to "
                f"{limit} bytes (ARCHIVE_MAX_UPLOAD_BYTES).", param="file",
                size_bytes=len(data), limit_bytes=limit,
            )
        document = parse_document(name, data,
                                  max_expanded_bytes=self.settings.max_expanded_bytes)
        if voice:
            document = replace(document, voice=True)
        return self.ingest_document(document, progress)

    def ingest_document(self, document: Document, progress: Progress | None = None,
                        prepared: Prepared | None = None) -> IngestResult:
        """Archive a parsed document (see :func:`app.archive.ingest.ingest_document`)."""
        with self.metrics.archive_operation("ingest"), self._write_lock:
            return ingest_document(self.store, self.embedder, self.settings, document,
                                   progress, prepared)

    def prepare(self, document: Document) -> Prepared:
        """Chunk ``document`` with this archive's settings, before :meth:`ingest_document`.

        Raises:
            InvalidDocument: no text to archive.
        """
        return prepare(document, self.embedder, self.settings)

    def delete_file(self, file: str) -> DeleteResult:
        """Remove every chunk of ``file``.

        Raises:
            ArchiveFileNotFound: no such file.
        """
        with self.metrics.archive_operation("delete"), self._write_lock:
            ids = self.store.ids({"file": file})
            if not ids:
                raise ArchiveFileNotFound(f"The archive has no file named {file!r}.",
                                          param="file")
            self.store.delete(ids=ids)
        return DeleteResult(file=file, deleted_chunks=len(ids))

    def reindex(self, progress: Progress | None = None,
                on_total: Callable[[int], None] | None = None) -> ReindexResult:
        """Rebuild the collection with this archive's embedding model (see
        :func:`app.archive.ingest.rebuild`)."""
        with self.metrics.archive_operation("reindex"), self._write_lock:
            return rebuild(self.store, self.embedder, self.settings, progress, on_total)


@dataclass
class ArchiveState:
    """Where the archive's startup stands; ``archive`` is set once it is ready; ``metrics``
    receive its latencies (the services' registry)."""

    metrics: Metrics
    status: ArchiveStatus = "loading"
    error: str | None = None
    archive: Archive | None = None

    def require(self) -> Archive:
        """The archive, once ready.

        Raises:
            ArchiveUnavailable: disabled, still loading, or failed to load (HTTP 503).
        """
        if self.archive is not None:
            return self.archive
        if self.status == "disabled":
            raise ArchiveUnavailable("The archive is disabled on this server (ARCHIVE_ENABLED).")
        if self.status == "error":
            raise ArchiveUnavailable(f"The archive failed to load: {self.error}")
        raise ArchiveUnavailable("The archive is still loading (embedding model); retry in a "
                                 "few seconds.")

    def ready(self) -> Archive | None:
        """The archive when ready, else ``None``."""
        return self.archive


async def load_archive(state: ArchiveState, settings: ArchiveSettings) -> None:
    """Open the archive off the event loop and publish it (or the failure) on ``state``."""
    if not settings.enabled:
        state.status = "disabled"
        return
    started = time.perf_counter()
    try:
        archive = await asyncio.to_thread(Archive.open, settings, state.metrics)
    except ArchiveUnavailable as error:
        logger.error("archive load failed: %s", error.message)
        state.status, state.error = "error", error.message
        return
    except Exception as error:
        logger.exception("archive load failed")
        state.status, state.error = "error", f"unexpected {type(error).__name__}"
        return
    state.archive, state.status = archive, "ready"
    logger.info("archive ready (%s, %s) in %.1f s", archive.store.location,
                archive.embedder.name, time.perf_counter() - started)

