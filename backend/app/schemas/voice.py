"""Bodies of the voice profile and feedback routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.schemas.context import ElementText, OptionalText, _Strict

StoryId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
#: Most rejected passages in one feedback record.
MAX_REJECTED = 8


class FeedbackRequest(_Strict):
    """The author's choice among variants or drafts of one story."""

    story_id: StoryId = Field(description="The story the feedback is about (your own id; "
                              "send it as story_id on later prose requests to carry notes).")
    operation: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, description="What produced the passages, e.g. generate-chapter.")
    chosen: ElementText | None = Field(
        default=None, description="The passage chosen; it becomes a voice exemplar (archived "
        "tagged as your voice) when the archive is on.")
    rejected: list[ElementText] = Field(default_factory=list, max_length=MAX_REJECTED,
                                        description="Passages rejected.")
    rating: int | None = Field(default=None, ge=1, le=10, description="1 (poor) to 10.")
    note: OptionalText | None = Field(default=None, description="Why, in the author's words.")
    carry_note: bool = Field(
        default=False, description="Carry the note into this story's next prose request (one "
        "with this story_id) as a high-priority user request, once.")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.chosen is None and not self.rejected and self.rating is None and not self.note:
            raise ValueError("give at least one of chosen, rejected, rating or note")
        if self.carry_note and not self.note:
            raise ValueError("carry_note needs a note")
        return self


class FeedbackOut(BaseModel):
    """A stored feedback record (times ISO 8601, UTC)."""

    id: int
    story_id: str
    created_at: str
    operation: str | None
    chosen: str | None
    rejected: list[str]
    rating: int | None
    note: str | None
    carry_note: bool
    carried_at: str | None = Field(description="When the note went into a request.")
    exemplar_file: str | None = Field(description="The archive file the chosen passage was "
                                      "stored as (tagged voice); null when not archived.")
    exemplar_note: str | None = Field(default=None, description="Why the chosen passage was "
                                      "not archived, when it was not.")


class FeedbackList(BaseModel):
    """A story's feedback, oldest first."""

    story_id: str
    feedback: list[FeedbackOut]


class VoiceComparison(BaseModel):
    """How a text compares with the voice: style similarity (embedding cosine, -1 to 1),
    function-word similarity (cosine, 0 to 1) and each measure beside the profile's."""

    style_similarity: float
    function_word_similarity: float
    measures: dict[str, dict[str, float]]
    words: int


class VoiceProfileResponse(BaseModel):
    """The tenant's voice profile: the files tagged voice, the passages it was built from,
    the embedding centroid's dimension and the stylometrics."""

    files: list[str]
    passages: int
    embedding_model: str
    embedding_dimension: int
    stylometrics: dict[str, object]
    comparison: VoiceComparison | None = Field(
        default=None, description="How the `text` asked about compares (GET /voice?text=).")


class VoiceCompareRequest(_Strict):
    """A text to compare with the voice profile."""

    text: ElementText

