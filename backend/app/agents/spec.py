"""What declares an agent operation: role, layers, defaults, output model and task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from app.context.elements import Layer
from app.llm.protocol import ChatMessage

ALL_LAYERS = frozenset(Layer)


@dataclass(frozen=True)
class TaskInput:
    """What one request asks of the agent.

    ``text``: the task instruction with the endpoint's inputs (never trimmed). ``exclude``: ids
    of context elements already in the task (e.g. the chapter under review), left out of the
    context so they are not paid for twice. ``history``: earlier chat turns, placed between the
    shared context and the task. ``summary``: payload fields the response echoes (e.g. the
    chapter number).
    """

    text: str
    exclude: frozenset[str] = frozenset()
    history: tuple[ChatMessage, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSpec:
    """One agent operation, e.g. the editor's review.

    Attributes:
        operation: endpoint name, e.g. ``editor-review``.
        agent: which agent runs it: writer, editor, character, rater or assistant.
        role: the agent's role prompt (goes after the shared story context).
        layers: context layers the agent reads.
        build_task: turns a validated request into a :class:`TaskInput`; raises
            ``UnknownReference`` when the request names what its context lacks.
        max_tokens: default completion tokens (``None``: ``LLM_MAX_TOKENS``), or a callable
            that computes it from the request.
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
    layers: frozenset[Layer]
    build_task: Callable[[Any], TaskInput]
    max_tokens: int | Callable[[Any], int] | None = None
    temperature: float | None = None
    output_model: type[BaseModel] | Callable[[Any], type[BaseModel]] | None = None
    streams: bool = False
    max_tokens_limit: int | None = None

    def max_tokens_for(self, request: Any) -> int | None:
        """The agent's default completion tokens for ``request`` (``None``: the server's)."""
        return self.max_tokens(request) if callable(self.max_tokens) else self.max_tokens

    def output_model_for(self, request: Any) -> type[BaseModel] | None:
        """The output model for ``request`` (``None`` for free-text agents)."""
        if self.output_model is None or isinstance(self.output_model, type):
            return self.output_model
        return self.output_model(request)
