"""Ingest: a parsed document becomes chunks, embeddings and one atomic replacement of the
file's chunks in the store; and the rebuild of the whole collection (re-index).

Chunk ids are ``<sha256(file)[:16]>-<version>-<index>``, where the version hashes the text,
its chapter marks, the chunk settings and the embedding model, and ``<sha256(file)[:16]>-
<version>`` is the chunk's revision: re-ingesting the same file gives the same ids (and writes
nothing); a changed file gets a new revision that replaces the old one. Both writes commit at
one point (:mod:`app.archive.store`): whatever step a failure or a crash interrupts, each file
is at its old or its new version, never both or neither, and a rebuild never loses the
archive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.archive.chunking import Chunk, chapter_marks, chunk_document, reconstruct
from app.archive.documents import FORMATS, Document, chapter_key
from app.archive.embeddings import Embedder
from app.archive.store import (
    REVISION_KEY,
    VOICE_KEY,
    ChromaStore,
    Metadata,
    Record,
    revision_of,
)
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
    """A document cut into chunks, with the ids and metadata they will be stored under and
    the revision they make (``<file key>-<version>``, the prefix of every id)."""

    document: Document
    chunks: list[Chunk]
    ids: list[str]
    metadatas: list[Metadata]
    revision: str


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
        *(["voice"] if document.voice else []),
    ]))[:12]
    revision = f"{_sha(document.file)[:16]}-{version}"
    ids = [f"{revision}-{c.index:05d}" for c in chunks]
    ingested_at = datetime.now(UTC).isoformat(timespec="seconds")
    metadatas: list[Metadata] = []
    for chunk in chunks:
        # Few fields per chunk (each one costs every query a little); file-level facts live on
        # chunk 0 only.
        metadata: Metadata = {
            "file": document.file, "title": document.title, "chapter": chunk.chapter,
            "chapter_key": chapter_key(chunk.chapter), "chapter_number": chunk.chapter_number,
            "chunk_index": chunk.index, "start": chunk.start, "own_start": chunk.own_start,
            "end": chunk.end, REVISION_KEY: revision,
        }
        if document.voice:  # on every chunk: retrieval filters on it
            metadata[VOICE_KEY] = True
        if chunk.index == 0:
            metadata |= {
                "format": document.format, "file_chars": len(document.text),
                "file_chunks": len(chunks), "file_sha256": sha, "version": version,
                "ingested_at": ingested_at,
                "chapters_json": json.dumps([m.title for m in document.chapters],
                                            ensure_ascii=False),
            }
        metadatas.append(metadata)
    return Prepared(document, chunks, ids, metadatas, revision)


def _write(store: ChromaStore, prepared: Prepared, embeddings: np.ndarray,
           collection: str | None = None) -> None:
    """Upsert every chunk in batches (of at most Chroma's batch limit)."""
    batch = max(1, min(store.max_batch_size(), 1000))
    for first in range(0, len(prepared.ids), batch):
        store.upsert(prepared.ids[first:first + batch], embeddings[first:first + batch],
                     [c.text for c in prepared.chunks[first:first + batch]],
                     prepared.metadatas[first:first + batch], collection=collection)


def _settle(settle: Callable[[str], bool], target: str, what: str) -> bool | None:
    """``settle(target)``: whether the write committed, ``None`` when the store failed (the
    next recovery finishes it; readers see one version meanwhile)."""
    try:
        return settle(target)
    except Exception:  # logged; the caller reports its own outcome
        logger.warning("could not finish the %s %s now; the next write or restart will",
                       what, target, exc_info=True)
        return None


def ingest_document(store: ChromaStore, embedder: Embedder, settings: ArchiveSettings,
                    document: Document, progress: Progress | None = None,
                    prepared: Prepared | None = None) -> IngestResult:
    """Archive ``document``, replacing any earlier version of the same file.

    Steps: recover what an interrupted write left, chunk (unless ``prepared`` by
    :func:`prepare` is given), embed every chunk, write the new chunks hidden from readers,
    commit (the new version shows, the old one hides: one atomic write), delete the old
    chunks. A failure before the commit leaves the file as it was (the new chunks are deleted
    again, or by the next recovery); after it, the ingest has succeeded.

    Raises:
        InvalidDocument: nothing to archive.
        ArchiveUnavailable: the store failed (nothing of this file changed).
        EmbeddingModelMismatch: the collection was built with another embedding model.
    """
    started = time.perf_counter()
    store.recover()
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
    replaced = {revision_of(i) for i in existing}
    write = store.begin(prepared.revision)
    try:
        _write(store, prepared, embeddings)
        store.commit(write, replaced)
    except BaseException as error:
        committed = _settle(store.settle, write, "write")
        if not committed or not isinstance(error, Exception):
            raise
        logger.warning("archived %s although its write reported a failure after the commit",
                       document.file)
    else:
        _settle(store.settle, write, "write")
    stale = [i for i in existing if i not in set(prepared.ids)]
    logger.info("archived %s: %d chunks (%d replaced) in %.1f s", document.file,
                len(prepared.ids), len(stale), time.perf_counter() - started)
    return result(replaced_chunks=len(stale), unchanged=False)


def collect_paths(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Files to ingest from ``paths``, each with its archive name: a file as given is named by
    its base name, a file found in a directory (searched recursively for supported
    extensions, hidden files skipped) by its path relative to that directory
    (``drafts/notes.md``). Sorted within each directory, without duplicate files; two files
    may still get one name (from two directories): the caller decides.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: dict[Path, str] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if (child.is_file() and child.suffix.lower() in FORMATS
                        and not any(p.startswith(".") for p in relative.parts)):
                    found.setdefault(child.resolve(), relative.as_posix())
        elif path.exists():
            found.setdefault(path.resolve(), path.name)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return list(found.items())


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
        documents.append(Document(file, str(first["title"]), text, marks, str(first["format"]),
                                  bool(first.get(VOICE_KEY, False))))
    return documents


def rebuild(store: ChromaStore, embedder: Embedder, settings: ArchiveSettings,
            progress: Progress | None = None,
            on_total: Callable[[int], None] | None = None) -> ReindexResult:
    """Re-chunk and re-embed every archived file with ``embedder`` into a new collection, then
    swap it in for the old one (whatever model built that). ``on_total`` gets the number of
    chunks to embed before the work starts.

    The swap is one atomic write (:meth:`~app.archive.store.ChromaStore.commit_build`); the old
    collection is dropped only after it. A failure before the swap drops the new collection
    (now or at the next recovery) and leaves the old one as it was.

    Raises:
        ArchiveUnavailable: the store failed.
    """
    started = time.perf_counter()
    store.recover()
    previous_model, records = store.all_records_unchecked()
    documents = documents_from_records(records)
    prepared = [prepare(d, embedder, settings) for d in documents]
    if on_total is not None:
        on_total(sum(len(p.ids) for p in prepared))
    build = store.begin_build()
    try:
        for item in prepared:
            embeddings = embedder.embed([c.text for c in item.chunks],
                                        batch_size=settings.embed_batch_size,
                                        progress=progress)
            _write(store, item, embeddings, collection=build)
        store.commit_build(build)
    except BaseException as error:
        committed = _settle(store.settle_build, build, "rebuild")
        if not committed or not isinstance(error, Exception):
            raise
        logger.warning("re-indexed although the rebuild reported a failure after the commit")
    else:
        _settle(store.settle_build, build, "rebuild")
    chunks = sum(len(p.ids) for p in prepared)
    logger.info("re-indexed %d files (%d chunks) with %s", len(prepared), chunks, embedder.name)
    return ReindexResult(files=len(prepared), chunks=chunks, embedding_model=embedder.name,
                         embedding_dimension=embedder.dimension, previous_model=previous_model,
                         seconds=time.perf_counter() - started)
