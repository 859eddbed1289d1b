"""The archivist: answers from the author's story archive, citing its passages (RAG).

Its context is not a story but the archive: the passages retrieved for the question (or the
conversation's last two user messages) are numbered from 1, best first, and form the shared
block; passages that do not fit the window are trimmed or left out from the end (the least
similar first), and the response lists the ones the model saw. The answer cites them by
number (``[1]``, ``[2][3]``); ``cited`` lists the numbers it cites that exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.agents.spec import AgentResult, AgentSpec, TaskInput, kept_sources
from app.context.elements import ContextElement, Layer
from app.context.report import AssemblyReport
from app.llm.protocol import ChatMessage
from app.schemas.archive import Passage, RagAnswer, RagChatRequest, RagQueryRequest
from app.schemas.context import Priority

#: The kind of the context elements that hold the numbered passages.
SOURCE_KIND = "archive_source"
#: Default temperature of grounded answers: low, so the model sticks to the passages.
RAG_TEMPERATURE = 0.2

PREAMBLE = (
    "You answer questions about the author's story archive. Use only the numbered passages "
    "below. After each statement, cite the passages it comes from by number in square "
    "brackets, like [1] or [2][3]. If the passages do not contain the answer, say that the "
    "archive does not tell, and do not invent one."
)
ROLE = "You are the archivist."
_CITATION = re.compile(r"\[(\d{1,3})\]")


def source_elements(passages: Sequence[Passage]) -> list[ContextElement]:
    """The retrieved passages as the archivist's context: numbered from 1 in rank order, all
    of medium priority so that the least similar give way first; the report's ``source`` of
    each is the passage with its number."""
    elements = []
    for i, passage in enumerate(passages):
        n = i + 1
        where = passage.title or passage.file
        if passage.chapter:
            where += f", {passage.chapter}"
        elements.append(ContextElement(
            id=f"sources[{i}]", kind=SOURCE_KIND, layer=Layer.plot_world,
            priority=Priority.medium, text=passage.text.strip(), heading=f"[{n}] ({where})",
            label=f"source [{n}] ({where})", order=i,
            source={**passage.model_dump(), "n": n},
        ))
    return elements


def sources(report: AssemblyReport) -> list[dict[str, Any]]:
    """The numbered passages that reached the prompt, best first."""
    return kept_sources(report, SOURCE_KIND)


def cited(text: str, given: Sequence[dict[str, Any]]) -> list[int]:
    """Source numbers cited in ``text`` as ``[n]``, in order of first citation, only those
    of ``given`` sources."""
    valid = {source["n"] for source in given}
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if n in valid and n not in seen:
            seen.append(n)
    return seen


def query_task(request: RagQueryRequest) -> TaskInput:
    return TaskInput(request.question)


def chat_task(request: RagChatRequest) -> TaskInput:
    *history, last = request.messages
    return TaskInput(last.content, history=tuple(ChatMessage(turn.role, turn.content)
                                                 for turn in history))


def chat_query(request: RagChatRequest) -> str:
    """What a conversation retrieves for: its last two user messages."""
    users = [m.content for m in request.messages if m.role == "user"]
    return "\n".join(users[-2:])


def _answer(result: AgentResult) -> dict[str, Any]:
    given = sources(result.report)
    return {"answer": result.text, "sources": given, "cited": cited(result.text, given)}


def _meta(_task: TaskInput, report: AssemblyReport) -> dict[str, Any]:
    return {"sources": sources(report)}


def _done(text: str, report: AssemblyReport) -> dict[str, Any]:
    return {"cited": cited(text, sources(report))}


SPECS = [
    AgentSpec("rag-query", "archive", ROLE, query_task, RagQueryRequest, RagAnswer, _answer,
              summary="Answer a question from the archive's passages, citing them as [n]",
              temperature=RAG_TEMPERATURE, path="/archive/rag/query",
              stream_path="/archive/rag/query/stream", tag="archive", echo=_meta,
              done_fields=_done,
              retrieval_query=lambda request: request.question, preamble=PREAMBLE,
              distills=False, prose=False),
    AgentSpec("rag-chat", "archive", ROLE, chat_task, RagChatRequest, RagAnswer, _answer,
              summary="A conversation answered from the archive, streamed as Server-Sent "
              "Events: meta (the numbered sources), token..., then done (with cited) or error",
              temperature=RAG_TEMPERATURE, json_route=False,
              stream_path="/archive/rag/chat", tag="archive", echo=_meta, done_fields=_done,
              retrieval_query=chat_query, preamble=PREAMBLE, distills=False,
              prose=False),
]
