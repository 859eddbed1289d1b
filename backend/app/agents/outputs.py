"""Pydantic output models of the JSON agents.

Decoding runs under a grammar built from these models' JSON Schema, so every string carries a
``max_length`` and every list a ``max_length``: a small model otherwise repeats itself inside a
string until max_tokens and the JSON never closes (see ARCHITECTURE.md, "Known facts").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from app.schemas.context import Priority

Line = Annotated[str, StringConstraints(min_length=1, max_length=240)]
Paragraph = Annotated[str, StringConstraints(min_length=1, max_length=600)]


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditorSuggestion(_Output):
    """One editorial note on the text under review."""

    issue: Line
    suggestion: Line
    priority: Priority


class EditorReview(_Output):
    """The editor agent's answer: 1 to 6 suggestions."""

    suggestions: list[EditorSuggestion] = Field(min_length=1, max_length=6)


class CharacterReaction(_Output):
    """How one character reacts to a plot point, from the inside (camelCase keys as in the
    front end's contract)."""

    actions: list[Line] = Field(min_length=1, max_length=4)
    dialog: list[Line] = Field(max_length=4)
    physicalSensations: list[Line] = Field(max_length=4)  # noqa: N815 - wire name
    emotions: list[Line] = Field(min_length=1, max_length=4)
    internalMonologue: list[Line] = Field(max_length=4)  # noqa: N815 - wire name


class RaterFeedback(_Output):
    """The rater agent's verdict: a score from 1 (poor) to 10 (excellent)."""

    # An enum rather than ge/le: the grammar converter enforces enums, not integer bounds.
    score: Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    opinion: Paragraph
    suggestions: list[Line] = Field(max_length=5)


class CharacterDetails(_Output):
    """A fleshed-out character sheet."""

    name: Line
    age: Annotated[str, StringConstraints(max_length=40)]
    appearance: Paragraph
    personality: Paragraph
    background: Paragraph
    motivations: Paragraph
    fears: Line


class ChapterOutline(_Output):
    """One planned chapter."""

    number: int = Field(ge=1, le=10_000)
    title: Line
    summary: Paragraph


def chapter_outlines_model(count: int) -> type[BaseModel]:
    """An output model holding exactly ``count`` chapter outlines."""
    return create_model(
        f"ChapterOutlines{count}",
        __base__=_Output,
        outlines=(list[ChapterOutline], Field(min_length=count, max_length=count)),
    )
