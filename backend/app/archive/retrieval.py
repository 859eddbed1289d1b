"""Retrieval: semantic search over the archive, and archive passages as agent context.

Agents get passages through :func:`archive_context`, the runner's ``extra_elements`` hook: a
query built from the request's own text fields, its user requests and plot elements retrieves
the top-k passages. They differ from request to request, so they go after the story's shared
block (in the request's own message, at low priority) and get the room it leaves. Retrieval
never fails a request: when the archive is off, loading or down, the request runs without
archive passages (and the failure is logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from app.archive.documents import chapter_key
from app.archive.embeddings import Embedder
from app.archive.store import VOICE_KEY, ChromaStore, Record, Where
from app.context.elements import ContextElement, Layer
from app.errors import WriterAssistantError
from app.schemas.archive import ArchiveFilters, Passage
from app.schemas.context import Priority
from app.schemas.requests import TargetWordsRequest

if TYPE_CHECKING:
    from app.agents.runner import ExtraElements, Retrieve
    from app.archive.service import Archive
    from app.schemas.requests import AgentRequest

logger = logging.getLogger(__name__)

#: Request fields whose text describes what the agent is asked to write, most specific first.
QUERY_FIELDS = ("plot_point", "title", "user_request", "text_to_flesh_out", "story_outline",
                "basic_bio", "character_name")
#: Characters of query text kept; the embedding model reads ~256 tokens (~1,000 characters).
MAX_QUERY_CHARS = 2000
#: Characters from the end of the newest chapter used when the request has no other text.
TAIL_QUERY_CHARS = 1000


def where_clause(filters: ArchiveFilters) -> Where | None:
    """Chroma ``where`` filter for ``filters`` (``None`` when none is set)."""
    terms: list[dict[str, Any]] = []
    if filters.file is not None:
        terms.append({"file": filters.file})
    if filters.chapter is not None:
        terms.append({"chapter_key": chapter_key(filters.chapter)})
    if filters.chapter_number is not None:
        terms.append({"chapter_number": filters.chapter_number})
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else {"$and": terms}


def passage(record: Record) -> Passage:
    """A stored chunk as a :class:`Passage`."""
    meta = record.metadata
    return Passage(
        id=record.id, file=str(meta["file"]), title=str(meta.get("title", "")),
        chapter=str(meta.get("chapter", "")), chapter_number=int(meta.get("chapter_number", 0)),
        chunk_index=int(meta["chunk_index"]), start=int(meta["start"]), end=int(meta["end"]),
        score=round(float(record.score or 0.0), 4), text=record.text,
    )


#: Chroma filters on the voice tag: story passages only, voice samples only (``$ne`` also
#: matches chunks without the key, i.e. every story chunk).
STORY_ONLY: Where = {VOICE_KEY: {"$ne": True}}
VOICE_ONLY: Where = {VOICE_KEY: True}


def _and(*terms: Where | None) -> Where | None:
    present = [t for t in terms if t]
    if not present:
        return None
    return present[0] if len(present) == 1 else {"$and": present}


def search(store: ChromaStore, embedder: Embedder, query: str, top_k: int,
           filters: ArchiveFilters | None = None, scope: Where | None = None
           ) -> list[Passage]:
    """The ``top_k`` passages closest to ``query`` (cosine similarity), best first, within
    ``filters`` and ``scope`` (:data:`STORY_ONLY`, :data:`VOICE_ONLY` or ``None``: all).

    Raises:
        ArchiveUnavailable: the store failed.
        EmbeddingModelMismatch: the collection was built with another embedding model.
    """
    embedding = embedder.embed([query])[0]
    where = _and(where_clause(filters) if filters is not None else None, scope)
    return [passage(r) for r in store.query(embedding, top_k, where)]


def build_query(request: AgentRequest) -> str:
    """Retrieval query for an agent request: its own text fields (plot point, title...), the
    last user chat message, then user requests and plot elements; the tail of the newest
    chapter when there is nothing else. Cut at ``MAX_QUERY_CHARS``; ``""`` when empty."""
    parts: list[str] = []
    for name in QUERY_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    messages = getattr(request, "messages", None)
    if messages:
        users = [m.content for m in messages if m.role == "user"]
        if users:
            parts.append(users[-1].strip())
    context = request.structured_context
    parts += [r.content for r in context.user_requests]
    parts += [p.content for p in context.plot_elements]
    if not parts and context.chapters:
        parts.append(context.chapters[-1].content[-TAIL_QUERY_CHARS:])
    return "\n".join(parts)[:MAX_QUERY_CHARS].strip()


def context_elements(passages: list[Passage]) -> list[ContextElement]:
    """Archive passages as per-request context elements (low priority, placed after the shared
    story block, with file and chapter in the heading and the report's ``source``)."""
    elements = []
    for i, item in enumerate(passages):
        where = f"{item.title or item.file}" + (f", {item.chapter}" if item.chapter else "")
        elements.append(ContextElement(
            id=f"archive[{i}]", kind="archive_passage", layer=Layer.plot_world,
            priority=Priority.low, text=item.text.strip(),
            heading=f"From the archive ({where}):", label=f"archive passage ({where})",
            order=i,
            source={"file": item.file, "title": item.title, "chapter": item.chapter,
                    "chapter_number": item.chapter_number, "chunk_index": item.chunk_index,
                    "score": item.score, "chunk_id": item.id},
            per_request=True,
        ))
    return elements


def exemplar_elements(passages: list[Passage]) -> list[ContextElement]:
    """The author's voice passages as style exemplars of a prose task (per request, placed
    after the shared story block, in the plot-and-world layer, medium priority)."""
    return [ContextElement(
        id=f"exemplar[{i}]", kind="style_exemplar", layer=Layer.plot_world,
        priority=Priority.medium, text=item.text.strip(),
        heading="A passage in the author's own voice (match its style, not its content):",
        label=f"style exemplar ({item.title or item.file})", order=i,
        source={"file": item.file, "title": item.title, "chunk_index": item.chunk_index,
                "score": item.score, "chunk_id": item.id},
        per_request=True) for i, item in enumerate(passages)]


def archive_context(get_archive: Callable[[], Archive | None],
                    exemplars: int = 0) -> ExtraElements:
    """The runner's ``extra_elements`` hook: retrieved archive passages for a request, and
    for a prose request (one that takes ``target_words``) the ``exemplars`` voice passages
    nearest it (``VOICE_EXEMPLARS``; :func:`exemplar_elements`).

    ``context_processing_config.use_archive``: ``False`` skips retrieval; ``None`` (default)
    retrieves when the archive is ready (an empty archive gives no passages); ``True`` asks
    for it and logs a warning when it cannot be had. Passages below ``ARCHIVE_MIN_SCORE`` are
    left out. Never raises: failures are logged and give no passages.
    """

    async def extra(request: AgentRequest) -> list[ContextElement]:
        config = request.context_processing_config
        wanted = config.use_archive if config is not None else None
        if wanted is False:
            return []
        archive = get_archive()
        if archive is None:
            log = logger.warning if wanted else logger.debug
            log("archive not ready; request runs without archive passages")
            return []
        query = build_query(request)
        if not query:
            return []
        try:
            # anyio's worker threads, not the default pool that archive uploads may fill
            passages = await anyio.to_thread.run_sync(archive.context_passages, query)
            voice = []
            if exemplars and isinstance(request, TargetWordsRequest):
                voice = await anyio.to_thread.run_sync(archive.voice_exemplars, query,
                                                       exemplars)
        except WriterAssistantError as error:
            logger.warning("archive retrieval failed (%s); request runs without archive "
                           "passages: %s", error.code, error.message)
            return []
        except Exception:  # retrieval must never fail the agent request
            logger.exception("archive retrieval failed; request runs without archive passages")
            return []
        return context_elements(passages) + exemplar_elements(voice)

    return extra


def archive_search(get_archive: Callable[[], Archive]) -> Retrieve:
    """The runner's ``retrieve`` hook for archive agents: the passages closest to a query,
    within the request's ``top_k`` (default ``ARCHIVE_TOP_K``) and filters, searched on
    anyio's worker threads.

    ``get_archive`` raises ``ArchiveUnavailable`` when there is no archive; retrieval raises
    as :meth:`app.archive.service.Archive.search`.
    """

    async def retrieve(query: str, request: ArchiveFilters) -> list[Passage]:
        archive = get_archive()
        return await anyio.to_thread.run_sync(
            archive.search, query, getattr(request, "top_k", None), request)

    return retrieve
