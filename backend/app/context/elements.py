"""Context elements: the structured context flattened into rendered, layered pieces.

Each element is one item the budget can keep, trim or drop, with the layer it competes in, its
priority and how it is rendered into the prompt.

Flattened for an :class:`Audience` (the agent asking, the request's phase, the character the
agent speaks as, the request's tag filters), each element is also filtered before budgeting
(see :func:`applies`): an element the audience should not see is marked ``filtered`` (it
reaches no prompt and costs no budget; the report says which rule left it out). An element
meant for some agents, phases or characters only that does apply is marked ``scope`` and
placed after the shared block, so the shared block stays the same for every agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.schemas.context import (
    PLOT_ELEMENT_TYPES,
    CharacterContext,
    ContextProcessingConfig,
    ElementBase,
    InstructionScope,
    Phase,
    PlotElementType,
    Priority,
    StructuredContext,
    SystemInstruction,
)


class Layer(str, Enum):
    """Context layers, in the order they appear in the prompt."""

    system = "system"
    plot_world = "plot_world"
    characters = "characters"
    recent_story = "recent_story"


LAYER_TITLES: dict[Layer, str] = {
    Layer.system: "Author's instructions",
    Layer.plot_world: "Plot and world",
    Layer.characters: "Characters and scene",
    Layer.recent_story: "Story so far",
}

#: Rank used for sorting: lower is more important.
PRIORITY_RANK: dict[Priority, int] = {Priority.high: 0, Priority.medium: 1, Priority.low: 2}

_SCENE_TYPES = {PlotElementType.scene.value, PlotElementType.setting.value}

#: Each operation's phase when the request names none; others take their agent's
#: (:data:`AGENT_PHASES`), or have none (``llm-chat``): elements' ``phases`` then do not
#: filter.
OPERATION_PHASES: dict[str, Phase] = {
    "generate-chapter": Phase.drafting,
    "flesh-out": Phase.drafting,
    "generate-chapter-outlines": Phase.drafting,
    "character-feedback": Phase.drafting,
    "generate-character-details": Phase.drafting,
    "regenerate-bio": Phase.drafting,
    "modify-chapter": Phase.revision,
    "editor-review": Phase.review,
    "rater-feedback": Phase.review,
}
#: A phase by agent, for operations not in :data:`OPERATION_PHASES`.
AGENT_PHASES: dict[str, Phase] = {"writer": Phase.drafting, "editor": Phase.review,
                                  "rater": Phase.review}


@dataclass(frozen=True)
class Audience:
    """Who a context is flattened for: the agent, the request's phase (``None``: phases do not
    filter), the character the agent speaks as (character operations) and the request's tag
    filters (casefolded)."""

    agent: str
    phase: Phase | None = None
    character: str | None = None
    include_tags: frozenset[str] = frozenset()
    exclude_tags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, agent: str, operation: str, config: ContextProcessingConfig | None = None,
           character: str | None = None) -> Audience:
        """The audience of one operation: its phase is ``config.phase``, else the operation's
        default (:data:`OPERATION_PHASES`, then :data:`AGENT_PHASES`)."""
        phase = config.phase if config is not None else None
        if phase is None:
            phase = OPERATION_PHASES.get(operation) or AGENT_PHASES.get(agent)
        return cls(
            agent=agent, phase=phase, character=character,
            include_tags=frozenset(t.casefold() for t in config.include_tags) if config else
            frozenset(),
            exclude_tags=frozenset(t.casefold() for t in config.exclude_tags) if config else
            frozenset(),
        )


@dataclass(frozen=True)
class Decision:
    """Whether an element reaches an audience: ``filtered`` names the rule that leaves it out
    (empty: it applies); ``scope`` says why an element meant for some agents, phases or
    characters only applies to this one (empty: it is for everyone)."""

    filtered: str = ""
    scope: str = ""


def _names(values: Any) -> str:
    return ", ".join(getattr(v, "value", v) for v in values)


def applies(item: ElementBase, audience: Audience, context: StructuredContext) -> Decision:
    """Whether ``item`` reaches ``audience``. The rules, in order (the first that fails
    filters it out): ``exclude_tags`` (any tag excluded), ``include_tags`` (a tagged element
    needs one of them; untagged elements stay), ``agents``, ``phases`` (not applied when the
    request has no phase), and for a system instruction of scope ``character``: only the
    character agent, speaking as the named character (any, when it names none)."""
    tags = {t.casefold() for t in item.tags}
    excluded = sorted(tags & audience.exclude_tags)
    if excluded:
        return Decision(filtered=f"tag excluded ({', '.join(excluded)} in exclude_tags)")
    if audience.include_tags and tags and not tags & audience.include_tags:
        return Decision(filtered=f"tags not included (its tags {', '.join(sorted(tags))}; "
                                 f"include_tags {', '.join(sorted(audience.include_tags))})")
    scope = []
    if item.agents:
        if audience.agent not in {a.value for a in item.agents}:
            return Decision(filtered=f"agent (it is for the {_names(item.agents)} agents; "
                                     f"this is the {audience.agent})")
        scope.append(f"it is for the {_names(item.agents)} agents")
    if item.phases:
        if audience.phase is not None and audience.phase not in item.phases:
            return Decision(filtered=f"phase (it is for {_names(item.phases)}; this request "
                                     f"is {audience.phase.value})")
        scope.append(f"it is for {_names(item.phases)}"
                     + ("" if audience.phase else " (this request has no phase)"))
    if isinstance(item, SystemInstruction) and item.scope is InstructionScope.character:
        whom = item.character or "any character"
        if audience.agent != "character":
            return Decision(filtered=f"character scope (it is for the character agent "
                                     f"speaking as {whom}; this is the {audience.agent})")
        if item.character is not None and not _same_character(item.character,
                                                              audience.character, context):
            return Decision(filtered=f"character scope (it is for {item.character}; this "
                                     f"agent speaks as {audience.character or 'no character'})")
        scope.append(f"it is for the character agent speaking as {whom}")
    return Decision(scope="; ".join(scope))


def _same_character(named: str, speaking: str | None, context: StructuredContext) -> bool:
    """Whether ``named`` (a name or id) is the character ``speaking`` (case-insensitive)."""
    if speaking is None:
        return False
    found = context.find_character(speaking)
    keys = {speaking.strip().casefold()}
    if found is not None:
        keys |= {found.character_id.casefold(), found.character_name.casefold()}
    named_found = context.find_character(named)
    if named_found is not None:
        return named_found.character_id.casefold() in keys
    return named.strip().casefold() in keys


@dataclass
class ContextElement:
    """One budgetable piece of context.

    Attributes:
        id: where it came from in the request, e.g. ``plot_elements[0]`` or ``chapters[2]``.
        kind: ``plot_element``, ``character``, ``user_request``, ``system_instruction``,
            ``chapter``, ``archive_passage`` or ``style_exemplar``.
        layer: the layer it competes for budget in.
        priority: high elements are never trimmed or dropped.
        text: the element's body (characters); what trimming cuts.
        heading: a line rendered above the body and never trimmed (may be empty).
        label: a short human name for the report.
        order: position in the request, for stable sorting.
        content_type: what the content is (a plot element type such as ``world``, or
            ``character``, ``chapter``...); picks the distillation strategy.
        keep_tail: when trimmed, keep the end (story text) rather than the start.
        source: extra provenance shown in the report (e.g. archive file and chapter).
        per_request: found for this request only (archive passages), or meant for some
            agents, phases or characters only (``scope``): placed after the shared block, so
            the block stays the same for every agent on the story.
        scope: why an element meant for some agents, phases or characters applies to this
            request (such elements are ``per_request``); empty for everyone's elements.
        filtered: the rule that leaves it out for this request (see :func:`applies`); such an
            element reaches no prompt and costs no budget.
        note: more words for the report's reason (e.g. an unknown plot element type).
        tags: the element's tags, for the report.
    """

    id: str
    kind: str
    layer: Layer
    priority: Priority
    text: str
    label: str
    order: int
    content_type: str = ""
    heading: str = ""
    keep_tail: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    per_request: bool = False
    scope: str = ""
    filtered: str = ""
    note: str = ""
    tags: tuple[str, ...] = ()

    def render(self, body: str | None = None, *, trimmed: bool = False) -> str:
        """The element as it appears in the prompt, with ``body`` in place of its text.

        ``trimmed`` marks the cut with ``[...]`` so the model knows text is missing.
        """
        body = self.text if body is None else body
        if trimmed:
            body = f"[...] {body}" if self.keep_tail else f"{body} [...]"
        return f"{self.heading}\n{body}" if self.heading else body


def _render_character(character: CharacterContext) -> str:
    lines = []
    goals = character.goals
    fields = [
        ("Current state", _render_state(character.current_state)),
        ("Goals", "; ".join(goals) if isinstance(goals, list) else goals),
        ("Personality", character.personality),
        ("Personality traits", ", ".join(character.personality_traits)),
        ("Background", character.background),
    ]
    lines += [f"{name}: {value}" for name, value in fields if value]
    if character.recent_actions:
        lines.append("Recent actions: " + "; ".join(character.recent_actions))
    if character.memories:
        lines.append("Memories: " + "; ".join(character.memories))
    if character.relationships:
        lines.append(
            "Relationships: "
            + "; ".join(f"{other}: {how}" for other, how in character.relationships.items())
        )
    if character.content:
        lines.append(character.content)
    return "\n".join(lines) or "(no details given)"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                          default=str)


def _render_state(state: str | dict[str, Any] | None) -> str | None:
    """A character's state: text as given, a mapping as ``emotion: determined; location:
    forest edge``."""
    if isinstance(state, dict):
        return "; ".join(f"{key.replace('_', ' ')}: {_value(value)}"
                         for key, value in state.items())
    return state


def _render_instruction(item: SystemInstruction) -> str:
    text = f"- {item.content}"
    if item.conditions:
        text += " (when " + "; ".join(f"{key.replace('_', ' ')}: {_value(value)}"
                                      for key, value in item.conditions.items()) + ")"
    return text


def _instruction_label(item: SystemInstruction) -> str:
    scope = item.scope.value
    if item.scope is InstructionScope.character and item.character:
        scope += f" {item.character}"
    detail = "" if item.scope is InstructionScope.global_ else f", {scope} scope"
    return f"system instruction ({item.type}{detail})"


def flatten(context: StructuredContext, audience: Audience | None = None
            ) -> list[ContextElement]:
    """Turn a structured context into context elements, in request order.

    Chapters get ``keep_tail`` and the newest chapters rank first: the recent-story layer is a
    rolling window over the end of the story. Their priority is medium (the newest) or low.

    With an ``audience``, each element is decided for it (:func:`applies`): those it should
    not see are marked ``filtered``; those meant for some agents, phases or characters only
    that apply to it are marked with their ``scope`` and placed after the shared block
    (``per_request``). Without one, nothing is filtered or scoped.
    """
    elements: list[ContextElement] = []

    def add(source_item: ElementBase, **kwargs: Any) -> None:
        decision = applies(source_item, audience, context) if audience else Decision()
        elements.append(ContextElement(
            order=len(elements), filtered=decision.filtered, scope=decision.scope,
            per_request=bool(decision.scope), tags=tuple(source_item.tags), **kwargs))

    for i, item in enumerate(context.system_instructions):
        add(
            item,
            id=item.id or f"system_instructions[{i}]",
            kind="system_instruction",
            layer=Layer.system,
            priority=item.priority,
            text=_render_instruction(item),
            label=_instruction_label(item),
            content_type="feedback",
        )
    for i, request in enumerate(context.user_requests):
        about = f", target: {request.target}" if request.target else ""
        more = f" (context: {request.context})" if request.context else ""
        add(
            request,
            id=request.id or f"user_requests[{i}]",
            kind="user_request",
            layer=Layer.system,
            priority=request.priority,
            text=f"- Request ({request.type}{about}): {request.content}{more}",
            label=f"user request ({request.type})",
            content_type="feedback",
        )
    if context.metadata:
        elements.append(ContextElement(
            order=len(elements),
            id="metadata",
            kind="metadata",
            layer=Layer.plot_world,
            priority=Priority.medium,
            text="\n".join(f"- {key}: {value}" for key, value in context.metadata.items()),
            label="story metadata",
            content_type="world",
        ))
    for i, element in enumerate(context.plot_elements):
        known = element.type in PLOT_ELEMENT_TYPES
        add(
            element,
            id=element.id or f"plot_elements[{i}]",
            kind="plot_element",
            layer=Layer.characters if element.type in _SCENE_TYPES else Layer.plot_world,
            priority=element.priority,
            text=f"- {element.type.replace('_', ' ').capitalize()}: {element.content}",
            label=f"plot element ({element.type})",
            content_type=element.type,
            note="" if known else (f"its type {element.type!r} is not a documented plot "
                                   "element type, so it went to the plot_world layer"),
        )
    for i, character in enumerate(context.character_contexts):
        add(
            character,
            id=f"character_contexts[{i}]",
            kind="character",
            layer=Layer.characters,
            priority=character.priority,
            heading=f"### {character.character_name} (id: {character.character_id})",
            text=_render_character(character),
            label=f"character {character.character_name}",
            content_type="character",
        )
    newest = len(context.chapters) - 1
    for i, chapter in enumerate(context.chapters):
        heading = f"### Chapter {chapter.number}" + (f": {chapter.title}" if chapter.title else "")
        add(
            chapter,
            id=f"chapters[{i}]",
            kind="chapter",
            layer=Layer.recent_story,
            priority=Priority.medium if i == newest else Priority.low,
            heading=heading,
            text=chapter.content,
            label=f"chapter {chapter.number}",
            content_type="chapter",
            keep_tail=True,
            source={"chapter": chapter.number},
        )
    return elements
