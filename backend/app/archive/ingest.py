"""Ingest: a parsed document becomes chunks, embeddings and one atomic replacement of the
file's chunks in the store; and the rebuild of the whole collection (re-index).

Chunk ids are ``<sha256(file)[:16]>-<version>-<index>``, where the version hashes the text,
its chapter marks, the chunk settings and the embedding model: re-ingesting the same file
gives the same ids (and writes nothing); a changed file gets new ids that replace the old
ones. A failure before or during the write removes what was written, so the archive is as it
was before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.archive.chunking import Chunk, chapter_marks, chunk_document, reconstruct
from app.archive.documents import FORMATS, Document, chapter_key
from app.archive.embeddings import Embedder
from app.archive.store import ChromaStore, Metadata, Record
from app.config import ArchiveSettings
from app.errors import InvalidDocument
from app.schemas.archive import IngestResult, ReindexResult

logger = logging.getLogger(__name__)

#: Called with the number of chunks embedded since the last call.
Progress = Callable[[int], None]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Prepared:
    """A document cut into chunks, with the ids and metadata they will be stored under."""

    document: Document
    chunks: list[Chunk]
    ids: list[str]
    metadatas: list[Metadata]


def prepare(document: Document, embedder: Embedder, settings: ArchiveSettings) -> Prepared:
    """Chunk ``document`` and compute its chunk ids and metadata (no embedding yet).

    Raises:
        InvalidDocument: the document gives no chunk (only whitespace).
    """
    chunks = chunk_document(document, embedder.count_tokens, settings.chunk_tokens,
                            settings.chunk_overlap_tokens)
    if not chunks:
        raise InvalidDocument(f"{document.file!r} has no text to archive.", param="file")
    sha = _sha(document.text)
    version = _sha(json.dumps([
        sha, [(m.start, m.title) for m in document.chapters], document.title,
        settings.chunk_tokens, settings.chunk_overlap_tokens, embedder.name,
    ]))[:12]
    file_key = _sha(document.file)[:16]
    ids = [f"{file_key}-{version}-{c.index:05d}" for c in chunks]
    ingested_at = datetime.now(UTC).isoformat(timespec="seconds")
    metadatas: list[Metadata] = []
    for chunk in chunks:
        # Few fields per chunk (each one costs every query a little); file-level facts live on
        # chunk 0 only.
        metadata: Metadata = {
            "file": document.file, "title": document.title, "chapter": chunk.chapter,
            "chapter_key": chapter_key(chunk.chapter), "chapter_number": chunk.chapter_number,
            "chunk_index": chunk.index, "start": chunk.start, "own_start": chunk.own_start,
            "end": chunk.end,
        }
        if chunk.index == 0:
            metadata |= {
                "format": document.format, "file_chars": len(document.text),
                "file_chunks": len(chunks), "file_sha256": sha, "version": version,
                "ingested_at": ingested_at,
                "chapters_json": json.dumps([m.title for m in document.chapters],
                                            ensure_ascii=False),
            }
        metadatas.append(metadata)
    return Prepared(document, chunks, ids, metadatas)


def _write(store: ChromaStore, prepared: Prepared, embeddings: np.ndarray,
           keep: set[str], collection: str | None = None) -> None:
    """Upsert every chunk in batches; on failure delete what was written (except ``keep``)."""
    batch = max(1, min(store.max_batch_size(), 1000))
    written: list[str] = []
    try:
        for first in range(0, len(prepared.ids), batch):
            ids = prepared.ids[first:first + batch]
            store.upsert(ids, embeddings[first:first + batch],
                         [c.text for c in prepared.chunks[first:first + batch]],
                         prepared.metadatas[first:first + batch], collection=collection)
            written += ids
    except BaseException:
        _rollback(store, [i for i in written if i not in keep], collection)
        raise


def _rollback(store: ChromaStore, ids: Sequence[str], collection: str | None) -> None:
    if not ids:
        return
    try:
        store.delete(ids=ids, collection=collection)
    except Exception:  # the first failure is the one to report
        logger.exception("could not roll back %d chunks after a failed ingest", len(ids))


def ingest_document(store: ChromaStore, embedder: Embedder, settings: ArchiveSettings,
                    document: Document, progress: Progress | None = None,
                    prepared: Prepared | None = None) -> IngestResult:
    """Archive ``document``, replacing any earlier version of the same file.

    Steps: chunk (unless ``prepared`` by :func:`prepare` is given), embed every chunk, write
    the new chunks, then delete the old ones. A failure in any step leaves the store as it
    was (the chunks written so far are deleted again).

    Raises:
        InvalidDocument: nothing to archive.
        ArchiveUnavailable: the store failed (nothing of this file changed).
        EmbeddingModelMismatch: the collection was built with another embedding model.
    """
    started = time.perf_counter()
    prepared = prepared or prepare(document, embedder, settings)
    existing = store.ids({"file": document.file})

    def result(replaced_chunks: int, unchanged: bool) -> IngestResult:
        return IngestResult(file=document.file, title=document.title, format=document.format,
                            chars=len(document.text), chunks=len(prepared.ids),
                            chapters=len(document.chapters), replaced_chunks=replaced_chunks,
                            unchanged=unchanged, seconds=time.perf_counter() - started)

    if set(existing) == set(prepared.ids):
        if progress is not None:
            progress(len(prepared.ids))
        return result(replaced_chunks=0, unchanged=True)
    embeddings = embedder.embed([c.text for c in prepared.chunks],
                                batch_size=settings.embed_batch_size,
                                progress=progress)
    keep = set(existing)
    _write(store, prepared, embeddings, keep)
    stale = [i for i in existing if i not in set(prepared.ids)]
    try:
        store.delete(ids=stale)
    except BaseException:
        _rollback(store, [i for i in prepared.ids if i not in keep], None)
        raise
    logger.info("archived %s: %d chunks (%d replaced) in %.1f s", document.file,
                len(prepared.ids), len(stale), time.perf_counter() - started)
    return result(replaced_chunks=len(stale), unchanged=False)


def collect_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to ingest from ``paths``: files as given, directories searched recursively for
    supported extensions (hidden files skipped), in sorted order without duplicates.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if (child.is_file() and child.suffix.lower() in FORMATS
                        and not any(p.startswith(".") for p in child.relative_to(path).parts)):
                    found[child] = None
        elif path.exists():
            found[path] = None
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return list(found)


def documents_from_records(records: Iterable[Record]) -> list[Document]:
    """Rebuild archived documents (text, title, chapters, format) from their chunk records,
    as a re-index needs them; records of each file must all be present."""
    by_file: dict[str, list[Record]] = {}
    for record in records:
        by_file.setdefault(str(record.metadata["file"]), []).append(record)
    documents = []
    for file, group in sorted(by_file.items()):
        group.sort(key=lambda r: int(r.metadata["chunk_index"]))
        first = group[0].metadata
        text = reconstruct([(int(r.metadata["start"]), int(r.metadata["own_start"]), r.text)
                            for r in group])
        marks = chapter_marks([(int(r.metadata["own_start"]), str(r.metadata["chapter"]),
                                int(r.metadata["chapter_number"])) for r in group])
        documents.append(Document(file, str(first["title"]), text, marks, str(first["format"])))
    return documents


def rebuild(store: ChromaStore, embedder: Embedder, settings: ArchiveSettings,
            progress: Progress | None = None,
            on_total: Callable[[int], None] | None = None) -> ReindexResult:
    """Re-chunk and re-embed every archived file with ``embedder`` into a new collection, then
    swap it in for the old one (whatever model built that). ``on_total`` gets the number of
    chunks to embed before the work starts.

    A failure before the swap deletes the new collection and leaves the old one as it was.

    Raises:
        ArchiveUnavailable: the store failed.
    """
    started = time.perf_counter()
    previous_model, records = store.all_records_unchecked()
    documents = documents_from_records(records)
    prepared = [prepare(d, embedder, settings) for d in documents]
    if on_total is not None:
        on_total(sum(len(p.ids) for p in prepared))
    staging = store.create_staging("reindex")
    try:
        for item in prepared:
            embeddings = embedder.embed([c.text for c in item.chunks],
                                        batch_size=settings.embed_batch_size,
                                        progress=progress)
            _write(store, item, embeddings, set(), collection=staging)
        store.replace_with(staging)
    except BaseException:
        try:
            store.drop(staging)
        except Exception:  # report the first failure
            logger.exception("could not delete the staging collection %s", staging)
        raise
    chunks = sum(len(p.ids) for p in prepared)
    logger.info("re-indexed %d files (%d chunks) with %s", len(prepared), chunks, embedder.name)
    return ReindexResult(files=len(prepared), chunks=chunks, embedding_model=embedder.name,
                         embedding_dimension=embedder.dimension, previous_model=previous_model,
                         seconds=time.perf_counter() - started)
