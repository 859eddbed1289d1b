"""Response bodies and stream event payloads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.agents.outputs import ChapterOutline, CharacterDetails, EditorSuggestion
from app.context.report import AssemblyReport
from app.schemas.usage import Usage


class TimingsOut(BaseModel):
    """Timings of one generation in milliseconds (and decode speed in tokens per second)."""

    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float
    decode_tokens_per_s: float


class Quality(BaseModel):
    """What the content check made of the answer (``app/agents/quality.py``)."""

    useful: bool = Field(description="The answer passed the content check.")
    problems: list[str] = Field(default_factory=list, description="What the check still finds "
                                "in this answer, by field (empty when useful).")
    repairs: list[str] = Field(default_factory=list, description="What was cut from the text "
                               "(an assistant's preamble, a repetition loop).")


class GenerationInfo(BaseModel):
    """What every agent response carries besides its payload."""

    generation_id: str | None = Field(
        default=None, description="The answer's generation record (GET "
        "/api/v1/generations/{id}; replay with POST .../replay); null with "
        "GENERATIONS_ENABLED off.")
    seed: int | None = Field(default=None, description="The seed of the first attempt: the "
                             "request's, or one drawn for it.")
    cache: Literal["hit", "miss", "off"] | None = Field(
        default=None, description="hit: answered from the response cache without "
        "generating; miss: generated, and kept for an identical request; off: generated "
        "without the cache (no explicit seed and temperature above 0, `cache: false`, or the "
        "cache is off).")
    model: str
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    timings: TimingsOut
    attempts: int = Field(description="Generations made: more than 1 when a JSON answer "
                          "needed its repair attempt or an answer failed the content check "
                          "and was tried again with another seed (QUALITY_MAX_RETRIES).")
    quality: Quality = Field(default_factory=lambda: Quality(useful=True),
                             description="The content check's verdict on the answer.")
    context_metadata: AssemblyReport = Field(description="The assembly report of the prompt.")


class VariantScores(BaseModel):
    """How one variant scores (see :mod:`app.agents.variants` for each measure)."""

    style_similarity: float | None = Field(
        description="Cosine between the variant's embedding and the author's voice profile "
        "(-1 to 1); null without a voice profile or embedding model.")
    novelty: float = Field(description="The lower of the two novelty measures (0 to 1).")
    novelty_embedding: float | None = Field(
        description="1 - the highest cosine between a passage of the variant and one of the "
        "story's chapters; null without an embedding model.")
    novelty_ngram: float = Field(description="1 - the largest share of the variant's word "
                                 "3-grams found in one chapter of the story.")
    length_fit: float | None = Field(description="1 - |words - target_words| / target_words "
                                     "(floored at 0); null without target_words.")
    rater_score: int | None = Field(description="The rater agent's score (1-10), when "
                                    "rate_variants was set.")
    overall: float = Field(description="Mean of the available scores (style floored at 0, "
                           "rater / 10); the rank follows it.")


class Variant(BaseModel):
    """One variant: its seed, text, scores and rank (1: best)."""

    index: int = Field(description="Order of generation, from 0.")
    generation_id: str | None = Field(default=None, description="This variant's generation "
                                      "record (each variant is a generation of its own).")
    seed: int
    rank: int
    text: str
    scores: VariantScores
    quality: Quality
    usage: Usage


class VariantsInfo(BaseModel):
    """The variants of a request with n > 1 (its text is the best one's)."""

    variants: list[Variant] | None = Field(
        default=None, description="Every variant, ranked (best first); null when n is 1.")


class ChapterResponse(GenerationInfo, VariantsInfo):
    chapter_number: int
    title: str | None = None
    chapter_text: str


class ModifyChapterResponse(GenerationInfo, VariantsInfo):
    chapter_number: int | None = None
    modified_chapter: str


class FleshOutResponse(GenerationInfo, VariantsInfo):
    fleshed_out_text: str


class EditorReviewResponse(GenerationInfo):
    chapter_number: int | None = None
    suggestions: list[EditorSuggestion]


class CharacterFeedbackResponse(GenerationInfo):
    character_name: str
    actions: list[str]
    dialog: list[str]
    physicalSensations: list[str]  # noqa: N815 - wire name
    emotions: list[str]
    internalMonologue: list[str]  # noqa: N815 - wire name


class RaterFeedbackResponse(GenerationInfo):
    score: int = Field(ge=1, le=10)
    opinion: str
    suggestions: list[str]


class CharacterDetailsResponse(GenerationInfo):
    character_name: str
    details: CharacterDetails


class RegenerateBioResponse(GenerationInfo):
    character_name: str
    bio: str


class ChapterOutlinesResponse(GenerationInfo):
    outlines: list[ChapterOutline]


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class LlmChatResponse(GenerationInfo):
    message: ChatReply


class ContextPreviewResponse(BaseModel):
    """The prompt an agent call would send, without generating."""

    operation: str
    prompt: str = Field(description="The exact prompt text, chat template applied.")
    messages: list[dict[str, str]] = Field(description="The messages before the template.")
    context_metadata: AssemblyReport


class ContextWarmResponse(BaseModel):
    """A story made ready ahead of time: its context distilled and its prompt processed, so
    the model's prefix cache holds its shared block."""

    operation: str
    model: str
    shared_prefix_tokens: int = Field(description="Tokens of the story's shared block.")
    usage: Usage = Field(description="The one-token generation that processed the prompt; "
                         "prompt_tokens_details.cached_tokens says how much was warm already.")
    timings: TimingsOut
    context_metadata: AssemblyReport


class TokenCountResponse(BaseModel):
    """Token counts with the served model's tokenizer (no special tokens)."""

    model: str
    tokens: int | None = Field(default=None, description="For a single text.")
    counts: list[int] | None = Field(default=None, description="For texts, in order.")
    total_tokens: int


class TokenValidateResponse(BaseModel):
    """Whether texts fit a token budget."""

    model: str
    total_tokens: int
    budget_tokens: int
    fits: bool
    n_ctx: int


class HealthResponse(BaseModel):
    """Service and model state."""

    status: Literal["ok"] = "ok"
    model_status: Literal["loading", "ready", "error"]
    model: str | None = None
    n_ctx: int | None = None
    error: str | None = None


class ReadyResponse(BaseModel):
    """Ready to serve."""

    status: Literal["ready"] = "ready"


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine code of the error (the README's error "
                      "table), e.g. `context_length_exceeded`, `queue_full`.")
    type: Literal["invalid_request_error", "authentication_error", "rate_limit_error",
                  "server_error"] = Field(
        description="OpenAI-style class of the answer, from its status: 401 "
        "`authentication_error`, 429 `rate_limit_error`, other 4xx `invalid_request_error` "
        "(change the request), 5xx `server_error`.")
    message: str = Field(description="What went wrong and what to change.")
    param: str | None = Field(default=None, description="The request field at fault, dotted.")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """The one error envelope of every non-2xx answer."""

    error: ErrorBody
