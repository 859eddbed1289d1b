"""The registry of agent operations: one line per agent module.

Each agent module (``app.agents.writer``, ``editor``, ``character``, ``rater``,
``assistant``, ``archivist``) declares its operations as :class:`~app.agents.spec.AgentSpec`
objects; everything else (HTTP routes and their docs, ``/context/preview``, the CLI) is
generated from :data:`REGISTRY`. A new agent is one module plus its line below.
"""

from __future__ import annotations

from app.agents import archivist, assistant, character, editor, rater, writer
from app.agents.sampling import completion_reserve
from app.agents.spec import AgentSpec
from app.config import ContextSettings, EndpointSettings, SamplingSettings

#: Opens every story's shared block: the whole team, described once, so that what one agent
#: call adds after the story (its role and task) stays short. That part is processed on every
#: call, at about 5 ms a token on 2 cores with a 6,000-token story in the KV cache
#: (bench/bench_agents.py), so what every agent shares belongs here.
TEAM_PREAMBLE = (
    "You are Writer Assistant, a team of fiction-writing agents helping an author with one "
    "story. The story context below is the author's; stay true to it. The team:\n"
    "- writer: a novelist who writes vivid, coherent prose in the story's own voice, shows "
    "rather than tells, honours the author's requests, and writes only the prose asked for "
    "(no titles, no notes);\n"
    "- editor: a developmental editor who finds concrete problems of consistency, pacing, "
    "clarity and style and proposes specific fixes, most important first;\n"
    "- character: inhabits one character at a time and answers from inside their head, true "
    "to their personality, state and history, in their own voice;\n"
    "- rater: a demanding reader who judges a plot point or passage against the story so far, "
    "scores it from 1 (poor) to 10 (excellent) and explains the score;\n"
    "- assistant: answers the author's questions about the story, briefly and concretely.\n"
    "Each request below the story names the agent that answers it. Editor, character and "
    "rater answers, character sheets and chapter plans are JSON only."
)


def build_registry(*modules_specs: list[AgentSpec]) -> dict[str, AgentSpec]:
    """Operation name -> spec, in the order given.

    Raises:
        ValueError: two specs share an operation name.
    """
    registry: dict[str, AgentSpec] = {}
    for specs in modules_specs:
        for spec in specs:
            if spec.operation in registry:
                raise ValueError(f"two agent specs are named {spec.operation!r}")
            registry[spec.operation] = spec
    return registry


REGISTRY: dict[str, AgentSpec] = build_registry(
    writer.SPECS,
    editor.SPECS,
    character.SPECS,
    rater.SPECS,
    assistant.SPECS,
    archivist.SPECS,
)


def default_completion_reserve(context: ContextSettings, sampling: SamplingSettings,
                               endpoints: EndpointSettings, n_ctx: int) -> int:
    """The completion reserve every story's shared block is planned against:
    ``CONTEXT_COMPLETION_RESERVE_TOKENS``, else the largest default ``max_tokens`` of the
    agents (``ENDPOINT_*_MAX_TOKENS`` where set, ``LLM_MAX_TOKENS`` for those without their
    own; agents' own defaults scaled to a quarter of the window of ``CONTEXT_MAX_TOKENS`` and
    ``n_ctx``, see :mod:`app.agents.sampling`), in tokens. With the defaults and an
    8192-token window: the writer's 2000."""
    return completion_reserve(REGISTRY.values(), context, sampling, endpoints, n_ctx)
