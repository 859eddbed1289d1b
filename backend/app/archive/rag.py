"""Retrieval-augmented answers: a question, the archive's passages, and the model's answer
citing them by number (``[1]``, ``[2]``...).

The passages go into the system message, numbered; passages are dropped from the end (the
least similar) until the prompt plus ``max_tokens`` fits the model's context window.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.config import Settings
from app.errors import ContextLengthExceeded, InvalidRequest
from app.llm.protocol import ChatMessage, Completion, SamplingParams, StreamItem, TextGenerator
from app.schemas.archive import (
    Passage,
    RagAnswer,
    RagChatRequest,
    RagQueryRequest,
    RagSource,
    RagUsage,
    _RagOptions,
)

if TYPE_CHECKING:
    from app.archive.service import Archive

#: Default temperature of grounded answers: low, so the model sticks to the passages.
RAG_TEMPERATURE = 0.2

INSTRUCTIONS = (
    "You answer questions about the author's story archive. Use only the numbered passages "
    "below. After each statement, cite the passages it comes from by number in square "
    "brackets, like [1] or [2][3]. If the passages do not contain the answer, say that the "
    "archive does not tell, and do not invent one."
)
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Grounding:
    """A prepared RAG generation: the messages, their sources (numbered from 1) and the
    sampling. ``sources`` are the passages that fit the window, best first."""

    messages: list[ChatMessage]
    sources: list[RagSource]
    params: SamplingParams


def sampling(settings: Settings, options: _RagOptions) -> SamplingParams:
    """Sampling of a RAG request: its overrides, else ``RAG_TEMPERATURE`` and the server's.

    Raises:
        InvalidRequest: ``max_tokens`` above ``LLM_MAX_TOKENS_LIMIT``.
    """
    limit = settings.llm_max_tokens_limit
    if options.max_tokens is not None and options.max_tokens > limit:
        raise InvalidRequest(f"max_tokens {options.max_tokens} is above this server's limit of "
                             f"{limit}.", param="max_tokens")
    return SamplingParams(
        max_tokens=options.max_tokens or settings.llm_max_tokens,
        temperature=RAG_TEMPERATURE if options.temperature is None else options.temperature,
        top_p=settings.llm_top_p, top_k=settings.llm_top_k,
        repeat_penalty=settings.llm_repeat_penalty, seed=options.seed,
    )


def _system(sources: Sequence[RagSource]) -> str:
    blocks = []
    for source in sources:
        where = source.title or source.file
        if source.chapter:
            where += f", {source.chapter}"
        blocks.append(f"[{source.n}] ({where})\n{source.text.strip()}")
    body = "\n\n".join(blocks) if blocks else "(no passages were found)"
    return f"{INSTRUCTIONS}\n\nPassages:\n\n{body}"


def ground(generator: TextGenerator, passages: Sequence[Passage],
           turns: Sequence[ChatMessage], params: SamplingParams) -> Grounding:
    """Messages for ``turns`` (the conversation, ending with the user's question) grounded on
    as many of ``passages`` as fit the window with ``params.max_tokens`` reserved.

    Raises:
        ContextLengthExceeded: not even the question without passages fits.
    """
    sources = [RagSource(n=i + 1, **p.model_dump()) for i, p in enumerate(passages)]
    while True:
        messages = [ChatMessage("system", _system(sources)), *turns]
        needed = generator.count_prompt_tokens(messages) + params.max_tokens
        if needed <= generator.n_ctx:
            return Grounding(messages, sources, params)
        if not sources:
            raise ContextLengthExceeded(
                f"The question and conversation take {needed - params.max_tokens} prompt "
                f"tokens; with max_tokens {params.max_tokens} that is above the model's window "
                f"of {generator.n_ctx}. Shorten the conversation or lower max_tokens.",
                param="messages", needed_tokens=needed, available_tokens=generator.n_ctx,
            )
        sources = sources[:-1]


def cited(text: str, sources: Sequence[RagSource]) -> list[int]:
    """Source numbers cited in ``text`` as ``[n]``, in order of first citation, only those
    that exist."""
    valid = {s.n for s in sources}
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if n in valid and n not in seen:
            seen.append(n)
    return seen


def usage(completion: Completion) -> RagUsage:
    """The token usage of a completion."""
    return RagUsage(prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    total_tokens=completion.prompt_tokens + completion.completion_tokens)


async def _retrieve(archive: Archive, query: str, options: _RagOptions) -> list[Passage]:
    top_k = options.top_k or archive.settings.archive_top_k
    return await asyncio.to_thread(archive.search, query, top_k, options)


async def answer(archive: Archive, generator: TextGenerator,
                 request: RagQueryRequest) -> RagAnswer:
    """Answer ``request.question`` from the archive.

    Raises:
        ArchiveUnavailable, EmbeddingModelMismatch: retrieval failed.
        InvalidRequest, ContextLengthExceeded, GenerationFailed: generation cannot run.
    """
    params = sampling(archive.settings, request)
    passages = await _retrieve(archive, request.question, request)
    grounding = ground(generator, passages, [ChatMessage("user", request.question)], params)
    completion = await generator.generate(grounding.messages, params)
    text = completion.text.strip()
    return RagAnswer(answer=text, sources=grounding.sources, cited=cited(text, grounding.sources),
                     model=generator.model_name, finish_reason=completion.finish_reason,
                     usage=usage(completion))


async def prepare_chat(archive: Archive, generator: TextGenerator,
                       request: RagChatRequest) -> Grounding:
    """Retrieve for the conversation's last two user messages and ground the whole
    conversation on the passages (raises as :func:`answer`, before anything is streamed)."""
    params = sampling(archive.settings, request)
    users = [m.content for m in request.messages if m.role == "user"]
    passages = await _retrieve(archive, "\n".join(users[-2:]), request)
    turns = [ChatMessage(m.role, m.content) for m in request.messages]
    return ground(generator, passages, turns, params)


def stream_chat(generator: TextGenerator, grounding: Grounding) -> AsyncIterator[StreamItem]:
    """The model's answer to a prepared chat: token deltas, then the completion."""
    return generator.stream(grounding.messages, grounding.params)
