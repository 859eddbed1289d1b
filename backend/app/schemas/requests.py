"""Request bodies of the agent endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from app.schemas.context import (
    MAX_ELEMENT_CHARS,
    ContextProcessingConfig,
    ElementText,
    OptionalText,
    ShortText,
    StructuredContext,
    _Strict,
)

RequiredShort = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                 max_length=200)]
#: Most variants one prose request may ask for.
MAX_VARIANTS = 4
#: Most chat messages in one /llm-chat request.
MAX_CHAT_MESSAGES = 100


class AgentRequest(_Strict):
    """Fields every agent endpoint takes: the story context, assembly knobs and generation
    overrides (``None``: the agent's or the server's default)."""

    structured_context: StructuredContext = Field(default_factory=StructuredContext)
    context_processing_config: ContextProcessingConfig | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(
        default=None, ge=1, description="Completion tokens; at most LLM_MAX_TOKENS_LIMIT."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1,
        description="Sampling seed (default: one drawn, returned as `seed`).")
    cache: bool = Field(
        default=True, description="false: never answer from the response cache (README, "
        "\"Every generation on the record\").")
    store_request: bool = Field(
        default=False, description="Keep this request in its generation record (default: "
        "only its SHA-256).")
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=64)] = Field(
        default="base", description="`base` (the served model) or a registered LoRA "
        "adapter's name (GET /api/v1/models).")


class TargetWordsRequest(AgentRequest):
    """A request for prose of about ``target_words`` words (the chapter operations)."""

    target_words: int | None = Field(
        default=None, ge=50, le=5000,
        description="About how many words to write. The task asks for them and, unless "
        "max_tokens is set, max_tokens follows (words / 0.75 tokens per word, plus 20%; at "
        "most the operation's limit and a quarter of the window, reported in "
        "context_metadata.max_tokens_note).",
    )
    n: int = Field(
        default=1, ge=1, le=MAX_VARIANTS,
        description="Variants to write (1-4), each with its own seed (seed, seed + 1, ...), "
        "scored for style similarity to the author's voice, novelty against the story, "
        "length fit and (with rate_variants) the rater's score, and returned ranked in "
        "`variants`; the response's text is the best one's.",
    )
    rate_variants: bool = Field(
        default=False, description="With n > 1: have the rater agent score each variant too "
        "(one more call per variant).")
    story_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=200)] | None = Field(
        default=None, description="Your id for the story: feedback notes sent for it with "
        "carry_note (POST /api/v1/feedback) go into this request as high-priority user "
        "requests, once.")


class GenerateChapterRequest(TargetWordsRequest):
    """Write the next chapter (writer agent)."""

    plot_point: OptionalText | None = Field(default=None, description="What should happen.")
    chapter_number: int | None = Field(
        default=None, ge=1, le=10_000, description="Default: one after the last chapter."
    )
    title: ShortText | None = None


class ModifyChapterRequest(TargetWordsRequest):
    """Rewrite a chapter as the author asks (writer agent). Give the chapter either by number
    (from ``structured_context.chapters``) or as text."""

    user_request: ElementText = Field(description="What to change.")
    chapter_number: int | None = Field(default=None, ge=1, le=10_000)
    current_chapter: ElementText | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModifyChapterRequest:
        if (self.chapter_number is None) == (self.current_chapter is None):
            raise ValueError("give exactly one of chapter_number or current_chapter")
        return self


class FleshOutRequest(TargetWordsRequest):
    """Expand a sketch into prose (writer agent)."""

    text_to_flesh_out: ElementText
    context_type: Literal["scene", "dialogue", "description", "action", "outline"] = "scene"


class EditorReviewRequest(AgentRequest):
    """Editorial suggestions on a chapter (editor agent). Give it by number or as text."""

    chapter_to_review: ElementText | None = None
    chapter_number: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_source(self) -> EditorReviewRequest:
        if (self.chapter_number is None) == (self.chapter_to_review is None):
            raise ValueError("give exactly one of chapter_number or chapter_to_review")
        return self


class CharacterFeedbackRequest(AgentRequest):
    """A character's reaction to a plot point (character agent)."""

    character_name: RequiredShort = Field(
        description="Name or id of a character in structured_context.character_contexts."
    )
    plot_point: ElementText


class RaterFeedbackRequest(AgentRequest):
    """A score and opinion on a plot point or passage, or on a chapter of the story by number
    (rater agent). Give exactly one of ``plot_point`` or ``chapter_number``."""

    plot_point: ElementText | None = Field(default=None,
                                           description="The plot point or passage to rate.")
    chapter_number: int | None = Field(
        default=None, ge=1, le=10_000,
        description="Rate this chapter of structured_context.chapters where it stands.")
    rater_name: ShortText = "rater"
    criteria: list[RequiredShort] = Field(
        default_factory=lambda: ["originality", "coherence with the story", "tension"],
        max_length=10,
    )

    @model_validator(mode="after")
    def _one_source(self) -> RaterFeedbackRequest:
        if (self.chapter_number is None) == (self.plot_point is None):
            raise ValueError("give exactly one of plot_point or chapter_number")
        return self


class CharacterDetailsRequest(AgentRequest):
    """A full character sheet from a name and notes (character agent)."""

    character_name: RequiredShort
    basic_bio: OptionalText = ""


class RegenerateBioRequest(AgentRequest):
    """A new biography of a character in the context (character agent)."""

    character_name: RequiredShort = Field(
        description="Name or id of a character in structured_context.character_contexts."
    )


class ChapterOutlinesRequest(AgentRequest):
    """Outlines of the next chapters (writer agent)."""

    story_outline: OptionalText = ""
    number_of_chapters: int = Field(default=3, ge=1, le=12)


class ChatTurn(_Strict):
    """One message of a conversation with the assistant."""

    role: Literal["user", "assistant"]
    content: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ELEMENT_CHARS)]


class LlmChatRequest(AgentRequest):
    """Chat with the assistant about the story. The last message must be the user's."""

    messages: list[ChatTurn] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)

    @model_validator(mode="after")
    def _ends_with_user(self) -> LlmChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must have role 'user'")
        return self
