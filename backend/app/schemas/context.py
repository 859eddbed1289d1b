"""Wire models of the structured story context every agent endpoint takes.

Lengths are in characters (the caller cannot know our tokenizer); the context manager counts
tokens. The limits bound the work one request can ask for; a request past them is a 422 that
names the field.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Longest text of one element or chapter, in characters (Alice's longest chapter is ~20,000).
MAX_ELEMENT_CHARS = 200_000
#: Most elements in one list of the context.
MAX_ELEMENTS = 200
#: Most chapters in the story so far.
MAX_CHAPTERS = 500

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
ElementText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ELEMENT_CHARS)
]
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=20_000)]


class Priority(str, Enum):
    """How much an element matters: high is never trimmed or dropped; low goes first."""

    high = "high"
    medium = "medium"
    low = "low"


class PlotElementType(str, Enum):
    """Kinds of plot element. ``scene`` and ``setting`` go to the characters-and-scene layer,
    the rest to the plot-and-world layer."""

    scene = "scene"
    setting = "setting"
    plot_point = "plot_point"
    plot_outline = "plot_outline"
    conflict = "conflict"
    theme = "theme"
    world = "world"
    backstory = "backstory"
    foreshadowing = "foreshadowing"
    goal = "goal"
    feedback = "feedback"
    other = "other"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlotElement(_Strict):
    """A piece of plot, scene or world information."""

    type: PlotElementType = Field(description="Kind of element; decides its context layer.")
    content: ElementText = Field(description="The element's text.")
    priority: Priority = Priority.medium
    id: ShortText | None = Field(default=None, description="Caller's id, echoed in the report.")


class CharacterContext(_Strict):
    """What the agents should know about one character."""

    character_id: ShortText = Field(min_length=1, description="Stable id of the character.")
    character_name: ShortText = Field(min_length=1, description="Name used in the story.")
    current_state: OptionalText | None = None
    goals: OptionalText | None = None
    personality: OptionalText | None = None
    background: OptionalText | None = None
    recent_actions: list[OptionalText] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    relationships: dict[ShortText, OptionalText] = Field(
        default_factory=dict, max_length=MAX_ELEMENTS
    )
    content: Annotated[str, StringConstraints(max_length=MAX_ELEMENT_CHARS)] | None = Field(
        default=None, description="Free-form notes on the character."
    )
    priority: Priority = Priority.medium


class UserRequest(_Strict):
    """An instruction from the author for this piece of work."""

    type: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")] = Field(
        default="instruction", description="Kind of request, e.g. instruction, style, constraint."
    )
    content: ElementText
    priority: Priority = Priority.medium
    id: ShortText | None = None


class SystemInstruction(_Strict):
    """A standing instruction to every agent (style guide, rating, point of view...)."""

    type: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")] = Field(
        default="instruction", description="Kind of instruction, e.g. style, behavior."
    )
    content: ElementText
    priority: Priority = Priority.high
    id: ShortText | None = None


class Chapter(_Strict):
    """A chapter of the story so far (the recent-story layer)."""

    number: int = Field(ge=1, le=10_000, description="Chapter number, unique in the story.")
    title: ShortText = ""
    content: ElementText


class StructuredContext(_Strict):
    """The StructuredContextContainer: everything the agents may draw on."""

    plot_elements: list[PlotElement] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    character_contexts: list[CharacterContext] = Field(
        default_factory=list, max_length=MAX_ELEMENTS
    )
    user_requests: list[UserRequest] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    system_instructions: list[SystemInstruction] = Field(
        default_factory=list, max_length=MAX_ELEMENTS
    )
    chapters: list[Chapter] = Field(
        default_factory=list,
        max_length=MAX_CHAPTERS,
        description="The story so far, oldest first; the newest text is kept first when trimming.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        max_length=50,
        description="Free-form story metadata (title, genre...); shown to the agents as given.",
    )

    @model_validator(mode="after")
    def _unique_references(self) -> StructuredContext:
        numbers = [c.number for c in self.chapters]
        if len(numbers) != len(set(numbers)):
            raise ValueError("chapters: chapter numbers must be unique")
        if numbers != sorted(numbers):
            raise ValueError("chapters: list chapters oldest first (ascending number)")
        ids = [c.character_id for c in self.character_contexts]
        if len(ids) != len(set(ids)):
            raise ValueError("character_contexts: character_id values must be unique")
        return self

    def find_character(self, name_or_id: str) -> CharacterContext | None:
        """The character whose id or name matches ``name_or_id`` (case-insensitive), or None."""
        key = name_or_id.strip().casefold()
        for character in self.character_contexts:
            if key in (character.character_id.casefold(), character.character_name.casefold()):
                return character
        return None

    def find_chapter(self, number: int) -> Chapter | None:
        """The chapter numbered ``number``, or None."""
        return next((c for c in self.chapters if c.number == number), None)


class ContextProcessingConfig(_Strict):
    """Per-request knobs of context assembly."""

    max_context_tokens: int | None = Field(
        default=None,
        ge=256,
        description="Cap on prompt plus completion tokens for this request (never above the "
        "model's n_ctx).",
    )
    use_archive: bool | None = Field(
        default=None,
        description="Archive passages in the plot-and-world layer: unset (default) when the "
        "archive is loaded and has relevant passages, false never, true asks for them (a "
        "warning is logged when the archive cannot give them; the request still runs).",
    )
