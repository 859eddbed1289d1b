"""Context elements: the structured context flattened into rendered, layered pieces.

Each element is one item the budget can keep, trim or drop, with the layer it competes in, its
priority and how it is rendered into the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.schemas.context import (
    CharacterContext,
    PlotElementType,
    Priority,
    StructuredContext,
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

_SCENE_TYPES = {PlotElementType.scene, PlotElementType.setting}


@dataclass
class ContextElement:
    """One budgetable piece of context.

    Attributes:
        id: where it came from in the request, e.g. ``plot_elements[0]`` or ``chapters[2]``.
        kind: ``plot_element``, ``character``, ``user_request``, ``system_instruction``,
            ``chapter`` or ``archive_passage``.
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
        per_request: found for this request only (archive passages): placed after the shared
            block, so the block stays the same for every agent on the story.
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
    fields = [
        ("Current state", character.current_state),
        ("Goals", character.goals),
        ("Personality", character.personality),
        ("Background", character.background),
    ]
    lines += [f"{name}: {value}" for name, value in fields if value]
    if character.recent_actions:
        lines.append("Recent actions: " + "; ".join(character.recent_actions))
    if character.relationships:
        lines.append(
            "Relationships: "
            + "; ".join(f"{other}: {how}" for other, how in character.relationships.items())
        )
    if character.content:
        lines.append(character.content)
    return "\n".join(lines) or "(no details given)"


def flatten(context: StructuredContext) -> list[ContextElement]:
    """Turn a structured context into context elements, in request order.

    Chapters get ``keep_tail`` and the newest chapters rank first: the recent-story layer is a
    rolling window over the end of the story. Their priority is medium (the newest) or low.
    """
    elements: list[ContextElement] = []

    def add(**kwargs: Any) -> None:
        elements.append(ContextElement(order=len(elements), **kwargs))

    for i, item in enumerate(context.system_instructions):
        add(
            id=item.id or f"system_instructions[{i}]",
            kind="system_instruction",
            layer=Layer.system,
            priority=item.priority,
            text=f"- {item.content}",
            label=f"system instruction ({item.type})",
            content_type="feedback",
        )
    for i, request in enumerate(context.user_requests):
        add(
            id=request.id or f"user_requests[{i}]",
            kind="user_request",
            layer=Layer.system,
            priority=request.priority,
            text=f"- Request ({request.type}): {request.content}",
            label=f"user request ({request.type})",
            content_type="feedback",
        )
    if context.metadata:
        add(
            id="metadata",
            kind="metadata",
            layer=Layer.plot_world,
            priority=Priority.medium,
            text="\n".join(f"- {key}: {value}" for key, value in context.metadata.items()),
            label="story metadata",
            content_type="world",
        )
    for i, element in enumerate(context.plot_elements):
        add(
            id=element.id or f"plot_elements[{i}]",
            kind="plot_element",
            layer=Layer.characters if element.type in _SCENE_TYPES else Layer.plot_world,
            priority=element.priority,
            text=f"- {element.type.value.replace('_', ' ').capitalize()}: {element.content}",
            label=f"plot element ({element.type.value})",
            content_type=element.type.value,
        )
    for i, character in enumerate(context.character_contexts):
        add(
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
