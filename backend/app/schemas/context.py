"""Wire models of the structured story context every agent endpoint takes.

Lengths are in characters (the caller cannot know our tokenizer); the context manager counts
tokens. The limits bound the work one request can ask for; a request past them is a 422 that
names the field. A field name no model knows is a 422 too, naming the nearest known name
(:class:`_Strict`).

The original Writer Assistant's StructuredContextContainer is a subset: its plot element,
user request and system instruction types, every element's ``tags`` and ``metadata``,
characters' ``personality_traits``, ``memories``, list ``goals`` and mapping
``current_state``, user requests' ``target``, ``context`` and ``timestamp``, system
instructions' ``scope`` and ``conditions``.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

#: Longest text of one element or chapter, in characters (Alice's longest chapter is ~20,000).
MAX_ELEMENT_CHARS = 200_000
#: Most elements in one list of the context.
MAX_ELEMENTS = 200
#: Most chapters in the story so far.
MAX_CHAPTERS = 500
#: Most tags on one element, and in one of ``include_tags`` / ``exclude_tags``.
MAX_TAGS = 32
#: Longest JSON text of one element's ``metadata``, a character's mapping ``current_state``
#: or an instruction's ``conditions``, in characters.
MAX_OBJECT_CHARS = 10_000

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
ElementText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ELEMENT_CHARS)
]
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=20_000)]
#: A short label selecting elements (``include_tags`` / ``exclude_tags``); compared
#: case-insensitively.
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
#: A lowercase identifier: plot element types.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
#: Request and instruction types.
TypeName = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")]


def _bounded_object(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object whose JSON text is at most :data:`MAX_OBJECT_CHARS` characters."""
    size = len(json.dumps(value, ensure_ascii=False, default=str))
    if size > MAX_OBJECT_CHARS:
        raise ValueError(f"at most {MAX_OBJECT_CHARS} characters of JSON (this is {size})")
    return value


#: A free-form JSON object of bounded size.
JsonObject = Annotated[dict[str, Any], Field(max_length=50), AfterValidator(_bounded_object)]


class Priority(str, Enum):
    """How much an element matters: high is never trimmed or dropped; low goes first."""

    high = "high"
    medium = "medium"
    low = "low"


class PlotElementType(str, Enum):
    """The documented kinds of plot element (any other lowercase slug is accepted too and goes
    to the plot-and-world layer). ``scene`` and ``setting`` go to the characters-and-scene
    layer, the rest to the plot-and-world layer. ``setup`` to ``transition`` are the original
    Writer Assistant's types."""

    scene = "scene"
    setting = "setting"
    plot_point = "plot_point"
    plot_outline = "plot_outline"
    chapter_outline = "chapter_outline"
    conflict = "conflict"
    theme = "theme"
    world = "world"
    backstory = "backstory"
    foreshadowing = "foreshadowing"
    goal = "goal"
    feedback = "feedback"
    setup = "setup"
    twist = "twist"
    payoff = "payoff"
    climax = "climax"
    resolution = "resolution"
    subplot = "subplot"
    transition = "transition"
    detail = "detail"
    other = "other"


#: The documented plot element types, by value.
PLOT_ELEMENT_TYPES = frozenset(t.value for t in PlotElementType)


class AgentName(str, Enum):
    """The story agents an element may be meant for (``agents``)."""

    writer = "writer"
    editor = "editor"
    character = "character"
    rater = "rater"
    assistant = "assistant"


class Phase(str, Enum):
    """Phases of the work: writing a draft, revising it, reviewing it. Each operation has a
    default (``generate-chapter`` drafting, ``modify-chapter`` revision, editor and rater
    review...); ``context_processing_config.phase`` overrides it."""

    drafting = "drafting"
    revision = "revision"
    review = "review"


class InstructionScope(str, Enum):
    """Where a system instruction applies. ``character``: only to the character agent, when
    it speaks as the instruction's ``character`` (any character when none is named); the
    others apply to every agent."""

    global_ = "global"
    story = "story"
    chapter = "chapter"
    scene = "scene"
    character = "character"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds directly (``Model`` or ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        models = [m for m in map(_model_of, typing.get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _unknown_field_message(model: type[BaseModel], name: str, known: list[str]) -> str:
    """Why ``name`` is refused: where it belongs (a field of a model one of the fields
    holds), else the nearest known name, else the known names."""
    for field_name, info in model.model_fields.items():
        nested = _model_of(info.annotation)
        if nested is not None and name in nested.model_fields:
            return f"unknown field {name} here; it is a field of {field_name}"
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"unknown field {name}; did you mean {near[0]}?"
    return f"unknown field {name}; known fields: {', '.join(known)}"


class _Strict(BaseModel):
    """Base of every request model: a field name it does not know is a 422 (never silently
    dropped) whose message names the field and the nearest known name
    (``unknown field plot_elemnts; did you mean plot_elements?``)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_fields(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        known = dict.fromkeys(cls.model_fields)  # ordered, for the list of known names
        known.update(dict.fromkeys(info.alias for info in cls.model_fields.values()
                                   if isinstance(info.alias, str)))
        unknown = [key for key in data if key not in known]
        if not unknown:
            return handler(data)
        names = list(known)
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("extra_forbidden",
                                         _unknown_field_message(cls, str(key), names)),
                loc=(key,), input=data[key])
            for key in unknown
        ]
        try:
            handler({key: value for key, value in data.items() if key in known})
        except ValidationError as error:  # report the other fields' errors with them
            errors += [
                InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]),
                                 loc=e["loc"], input=e["input"])
                for e in error.errors()
            ]
        raise ValidationError.from_exception_data(cls.__name__, errors)


class ElementBase(_Strict):
    """What every element of the context may carry besides its content."""

    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS,
        description="Labels that select the element (context_processing_config.include_tags "
        "and exclude_tags).")
    metadata: JsonObject = Field(
        default_factory=dict,
        description="Free-form data of the caller's, kept with the element (not shown to the "
        f"model); a JSON object of at most {MAX_OBJECT_CHARS} characters.")
    phases: list[Phase] = Field(
        default_factory=list, max_length=len(Phase),
        description="The phases the element applies to (empty: every phase); other phases "
        "leave it out.")
    agents: list[AgentName] = Field(
        default_factory=list, max_length=len(AgentName),
        description="The agents the element applies to (empty: every agent); other agents "
        "leave it out.")


class PlotElement(ElementBase):
    """A piece of plot, scene or world information."""

    type: Slug = Field(
        description="Kind of element; decides its context layer. One of "
        + ", ".join(t.value for t in PlotElementType)
        + ", or any other lowercase slug (it goes to the plot-and-world layer).",
        examples=["scene", "twist"])
    content: ElementText = Field(description="The element's text.")
    priority: Priority = Priority.medium
    id: ShortText | None = Field(default=None, description="Caller's id, echoed in the report.")


class CharacterContext(ElementBase):
    """What the agents should know about one character."""

    character_id: ShortText = Field(min_length=1, description="Stable id of the character.")
    character_name: ShortText = Field(min_length=1, description="Name used in the story.")
    current_state: str | dict[str, Any] | None = Field(
        default=None,
        description="Their state now: text, or a mapping such as "
        '{"emotion": "determined", "location": "forest edge"} (a JSON object of at most '
        f"{MAX_OBJECT_CHARS} characters).")
    goals: str | list[str] | None = Field(
        default=None, description=f"Text, or a list of at most {MAX_ELEMENTS} goals.")
    personality: OptionalText | None = None
    personality_traits: list[ShortText] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    background: OptionalText | None = None
    recent_actions: list[OptionalText] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    memories: list[OptionalText] = Field(default_factory=list, max_length=MAX_ELEMENTS)
    relationships: dict[ShortText, OptionalText] = Field(
        default_factory=dict, max_length=MAX_ELEMENTS
    )
    content: Annotated[str, StringConstraints(max_length=MAX_ELEMENT_CHARS)] | None = Field(
        default=None, description="Free-form notes on the character."
    )
    priority: Priority = Priority.medium

    @field_validator("current_state")
    @classmethod
    def _state(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, dict):
            if len(value) > 50:
                raise ValueError("a mapping of at most 50 entries")
            return _bounded_object(value)
        return _text(value)

    @field_validator("goals")
    @classmethod
    def _goals(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_ELEMENTS:
                raise ValueError(f"at most {MAX_ELEMENTS} goals")
            return [_text(goal) or "" for goal in value]
        return _text(value)


def _text(value: str | None) -> str | None:
    """``value`` stripped, within :data:`OptionalText`'s length."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > 20_000:
        raise ValueError("at most 20000 characters")
    return value


class UserRequest(ElementBase):
    """An instruction from the author for this piece of work."""

    type: TypeName = Field(
        default="instruction",
        description="Kind of request, e.g. instruction, feedback, modification, addition, "
        "removal, style_change, tone_adjustment, preference, general.")
    content: ElementText
    priority: Priority = Priority.medium
    id: ShortText | None = None
    target: ShortText | None = Field(
        default=None, description="What the request is about, e.g. dialogue, a character.")
    context: OptionalText | None = Field(default=None,
                                         description="More context for the request.")
    timestamp: datetime | None = Field(default=None, description="When the author asked.")


class SystemInstruction(ElementBase):
    """A standing instruction to the agents (style guide, rating, point of view...)."""

    type: TypeName = Field(
        default="instruction",
        description="Kind of instruction, e.g. style, behavior, constraint, format, rule.")
    content: ElementText
    priority: Priority = Priority.high
    id: ShortText | None = None
    scope: InstructionScope = Field(
        default=InstructionScope.global_,
        description="global, story, chapter or scene: every agent; character: only the "
        "character agent speaking as `character` (any character when unset). Default: "
        "character when `character` is given, else global.")
    character: ShortText | None = Field(
        default=None, min_length=1,
        description="For a character-scoped instruction: the name or id of the character "
        "it applies to.")
    conditions: JsonObject = Field(
        default_factory=dict,
        description="When the instruction applies, in the author's words (shown to the "
        "agents with it).")

    @model_validator(mode="after")
    def _character_scope(self) -> SystemInstruction:
        if self.character is not None:
            if "scope" not in self.model_fields_set:
                self.scope = InstructionScope.character
            elif self.scope is not InstructionScope.character:
                raise ValueError(
                    "character names the character a character-scoped instruction applies "
                    "to: set scope to character or leave scope out")
        return self


class Chapter(ElementBase):
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
    phase: Phase | None = Field(
        default=None,
        description="The phase this request belongs to (default: the operation's own: "
        "drafting for writing, revision for modify-chapter, review for the editor and the "
        "rater); elements whose `phases` leave it out are filtered out.")
    include_tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS,
        description="Keep only tagged elements with at least one of these tags (elements "
        "without tags stay); case-insensitive.")
    exclude_tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS,
        description="Leave out elements with any of these tags (wins over include_tags); "
        "case-insensitive.")
