"""What declares an agent operation: everything about it in one :class:`AgentSpec`.

An operation's spec names its role, sampling defaults, request model, output model, response
model, how the response is built from the answer (the echoed fields and where the answer
goes), whether it streams and where its routes live. The HTTP routes, ``/context/preview``,
the CLI and the OpenAPI docs are all generated from the registry of specs
(``app.agents.registry``); a new agent is one module declaring its spec plus its line in the
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from app.context.report import AssemblyReport, Fate
from app.generations.recorder import Stamp
from app.llm.protocol import ChatMessage, Completion


@dataclass(frozen=True)
class TaskInput:
    """What one request asks of the agent.

    ``text``: the task instruction with the endpoint's inputs (never trimmed). ``reference``:
    the id of a context element the task is about (e.g. the chapter under review), which
    ``text`` refers to where it stands in the shared story block; ``inline`` is the task with
    that element quoted in full, for when it did not fit the block whole. ``history``: earlier
    chat turns, placed between the shared context and the task. ``summary``: payload fields
    the response echoes (e.g. the chapter number). ``stop``: stop strings that depend on the
    request (e.g. the next chapter's heading), on top of the spec's (see
    :meth:`AgentSpec.stop_for`).
    """

    text: str
    reference: str | None = None
    inline: str = ""
    history: tuple[ChatMessage, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentResult:
    """The outcome of one agent call.

    ``text`` is the model's text (stripped and repaired for free-text agents); ``output``
    the validated JSON output of JSON agents (else ``None``); ``attempts`` counts the
    generations made (a repair attempt and content-check retries included); ``problems``
    are what the content check still finds in the returned answer (empty: useful);
    ``repairs`` what was cut from the text (an assistant's preamble, a loop).
    """

    spec: AgentSpec
    task: TaskInput
    text: str
    output: BaseModel | None
    completion: Completion
    report: AssemblyReport
    attempts: int
    problems: tuple[str, ...] = ()
    repairs: tuple[str, ...] = ()
    #: Its generation record: id, seed and cache outcome (``None`` with records off).
    generation: Stamp | None = None
    #: The prompt of the first attempt (after distillation), as generated from.
    messages: tuple[ChatMessage, ...] = ()


#: The response's own fields from an agent's result (besides the shared generation fields).
Respond = Callable[[AgentResult], dict[str, Any]]
#: The fields a stream's ``meta`` event echoes, from the task and the assembly report.
Echo = Callable[[TaskInput, AssemblyReport], dict[str, Any]]
#: Extra fields of a stream's ``done`` event, from the text and the assembly report.
DoneFields = Callable[[str, AssemblyReport], dict[str, Any]]


def text_answer(name: str) -> Respond:
    """A free-text agent's response: the echoed fields and the text under ``name``."""
    return lambda result: {**result.task.summary, name: result.text}


def json_answer(name: str | None = None) -> Respond:
    """A JSON agent's response: the echoed fields and the output's fields (``name`` None),
    or the output under ``name``."""

    def respond(result: AgentResult) -> dict[str, Any]:
        output = result.output.model_dump() if result.output is not None else {}
        return {**result.task.summary, **({name: output} if name else output)}

    return respond


def echo_summary(task: TaskInput, _report: AssemblyReport) -> dict[str, Any]:
    """The default ``meta`` echo: the task's summary fields (e.g. the chapter number)."""
    return dict(task.summary)


def no_done_fields(_text: str, _report: AssemblyReport) -> dict[str, Any]:
    return {}


def kept_sources(report: AssemblyReport, kind: str) -> list[dict[str, Any]]:
    """The ``source`` of each element of ``kind`` that reached the prompt (kept or
    trimmed), in request order."""
    return [element.source for element in report.elements
            if element.kind == kind and element.fate in (Fate.kept, Fate.trimmed)]


@dataclass(frozen=True)
class AgentSpec:
    """One agent operation, e.g. the editor's review.

    Attributes:
        operation: the operation's name, e.g. ``editor-review`` (its route, metrics label and
            CLI name).
        agent: which agent runs it (the metrics label): writer, editor, character, rater,
            assistant or archive.
        role: the agent's role prompt (goes after the shared context, which every agent of a
            story reads whole so that they all share it).
        build_task: turns a validated request into a :class:`TaskInput`; raises
            ``UnknownReference`` when the request names what its context lacks.
        request_model: the request body's pydantic model.
        response_model: the JSON response's pydantic model (its generation fields and
            :attr:`respond`'s).
        respond: the response's own fields from the result (see :func:`text_answer`,
            :func:`json_answer`).
        summary: one line for the docs.
        max_tokens: default completion tokens for a request with default fields (``None``:
            ``LLM_MAX_TOKENS``). ``ENDPOINT_<OPERATION>_MAX_TOKENS`` overrides it, and a
            free-text agent's is scaled to small windows (:mod:`app.agents.sampling`).
        max_tokens_per_request: computes the default from the request instead, where it
            depends on it (e.g. the number of outlines asked for).
        temperature: default temperature (``None``: ``LLM_TEMPERATURE``);
            ``ENDPOINT_<OPERATION>_TEMPERATURE`` overrides it.
        output_model: for JSON agents, the pydantic model of the output, or a callable that
            builds it from the request (for sizes that depend on it).
        max_tokens_limit: the most completion tokens a request may ask of this agent (on top
            of ``LLM_MAX_TOKENS_LIMIT``); ``None``: only the server's limit.
        streams: whether the operation has a Server-Sent Events route (every one has).
        json_route: whether it has a JSON route.
        path / stream_path: the routes under ``/api/v1`` (default ``/<operation>`` and
            ``/<operation>/stream``).
        tag: the OpenAPI tag of its routes.
        echo / done_fields: what a stream's ``meta`` event echoes and what its ``done`` event
            adds.
        retrieval_query: set for agents whose context is the archive rather than a story
            (RAG): the text to retrieve passages for, from the request. Their context is the
            retrieved passages, numbered, in the shared block.
        preamble: opens the shared block (``None``: the team's preamble, so that every agent
            of a story shares it).
        distills: whether overflowing context may be summarized (else trimmed and dropped).
        prose: for free-text agents, whether the answer is prose the author asked for (a
            chapter, a biography), held to the prose checks (no assistant's preamble, a
            floor of words); chat and archive answers are not.
        stop: stop strings of every generation of the operation (the completion ends before
            the first one); a request's own are :attr:`TaskInput.stop`, and
            :meth:`stop_for` gives both.
    """

    operation: str
    agent: str
    role: str
    build_task: Callable[[Any], TaskInput]
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    respond: Respond
    summary: str = ""
    max_tokens: int | None = None
    max_tokens_per_request: Callable[[Any], int] | None = None
    temperature: float | None = None
    output_model: type[BaseModel] | Callable[[Any], type[BaseModel]] | None = None
    max_tokens_limit: int | None = None
    streams: bool = True
    json_route: bool = True
    path: str | None = None
    stream_path: str | None = None
    tag: str = "agents"
    echo: Echo = echo_summary
    done_fields: DoneFields = no_done_fields
    retrieval_query: Callable[[Any], str] | None = None
    preamble: str | None = None
    distills: bool = True
    prose: bool = True
    stop: tuple[str, ...] = ()

    @property
    def route(self) -> str:
        """The JSON route under ``/api/v1``."""
        return self.path or f"/{self.operation}"

    @property
    def stream_route(self) -> str:
        """The Server-Sent Events route under ``/api/v1``."""
        return self.stream_path or f"/{self.operation}/stream"

    def max_tokens_for(self, request: Any) -> int | None:
        """The agent's default completion tokens for ``request`` (``None``: the server's)."""
        if self.max_tokens_per_request is not None:
            return self.max_tokens_per_request(request)
        return self.max_tokens

    def stop_for(self, task: TaskInput) -> tuple[str, ...]:
        """The stop strings of a generation for ``task``: the spec's, then the task's."""
        return tuple(dict.fromkeys((*self.stop, *task.stop)))

    def output_model_for(self, request: Any) -> type[BaseModel] | None:
        """The output model for ``request`` (``None`` for free-text agents)."""
        if self.output_model is None or isinstance(self.output_model, type):
            return self.output_model
        return self.output_model(request)
