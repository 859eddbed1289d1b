"""What declares an agent operation: role, defaults, output model and task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from app.llm.protocol import ChatMessage


@dataclass(frozen=True)
class TaskInput:
    """What one request asks of the agent.

    ``text``: the task instruction with the endpoint's inputs (never trimmed). ``reference``:
    the id of a context element the task is about (e.g. the chapter under review), which
    ``text`` refers to where it stands in the shared story block; ``inline`` is the task with
    that element quoted in full, for when it did not fit the block whole. ``history``: earlier
    chat turns, placed between the shared context and the task. ``summary``: payload fields
    the response echoes (e.g. the chapter number).
    """

    text: str
    reference: str | None = None
    inline: str = ""
    history: tuple[ChatMessage, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSpec:
    """One agent operation, e.g. the editor's review.

    Attributes:
        operation: endpoint name, e.g. ``editor-review``.
        agent: which agent runs it: writer, editor, character, rater or assistant.
        role: the agent's role prompt (goes after the shared story context, which every
            agent reads whole so that they all share it).
        build_task: turns a validated request into a :class:`TaskInput`; raises
            ``UnknownReference`` when the request names what its context lacks.
        max_tokens: default completion tokens for a request with default fields (``None``:
            ``LLM_MAX_TOKENS``).
        max_tokens_per_request: computes the default from the request instead, where it
            depends on it (e.g. the number of outlines asked for).
        temperature: default temperature (``None``: ``LLM_TEMPERATURE``).
        output_model: for JSON agents, the pydantic model of the output, or a callable that
            builds it from the request (for sizes that depend on it).
        streams: whether the endpoint has a ``/stream`` twin (SSE).
        max_tokens_limit: the most completion tokens a request may ask of this agent (on top
            of ``LLM_MAX_TOKENS_LIMIT``); ``None``: only the server's limit.
    """

    operation: str
    agent: str
    role: str
    build_task: Callable[[Any], TaskInput]
    max_tokens: int | None = None
    max_tokens_per_request: Callable[[Any], int] | None = None
    temperature: float | None = None
    output_model: type[BaseModel] | Callable[[Any], type[BaseModel]] | None = None
    streams: bool = False
    max_tokens_limit: int | None = None

    def max_tokens_for(self, request: Any) -> int | None:
        """The agent's default completion tokens for ``request`` (``None``: the server's)."""
        if self.max_tokens_per_request is not None:
            return self.max_tokens_per_request(request)
        return self.max_tokens

    def output_model_for(self, request: Any) -> type[BaseModel] | None:
        """The output model for ``request`` (``None`` for free-text agents)."""
        if self.output_model is None or isinstance(self.output_model, type):
            return self.output_model
        return self.output_model(request)
