"""Request and response bodies of the chapter pipeline (draft, critique, revise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.context.report import AssemblyReport
from app.schemas.context import Priority, ShortText, _Strict
from app.schemas.requests import GenerateChapterRequest, RequiredShort
from app.schemas.responses import Quality, TimingsOut
from app.schemas.usage import Usage

#: Most rounds (drafts) one pipeline request may ask for.
MAX_ROUNDS = 4
#: Most raters one pipeline request may configure.
MAX_RATERS = 4


class PipelineRater(_Strict):
    """One rater the author configures: a name (a persona, e.g. "a young reader") and the
    criteria it scores the draft on."""

    name: ShortText = "reader"
    criteria: list[RequiredShort] = Field(
        default_factory=lambda: ["engagement", "clarity", "consistency with the story"],
        min_length=1, max_length=8)


class ChapterPipelineRequest(GenerateChapterRequest):
    """A chapter that goes through the team: the writer drafts it, the editor suggests changes
    and the raters score it, the writer revises it with the selected suggestions; again until
    the mean score reaches ``min_score`` or ``max_rounds`` drafts were written.

    ``temperature``, ``max_tokens`` and ``seed`` apply to the writer's drafts; the editor and
    raters use their own defaults.
    """

    n: Literal[1] = Field(default=1, description="One draft per round (use max_rounds).")
    rate_variants: Literal[False] = False
    raters: list[PipelineRater] = Field(
        default_factory=lambda: [PipelineRater()], min_length=1, max_length=MAX_RATERS,
        description="Who scores each draft (score 1-10 each); the mean decides when to stop.")
    min_score: float | None = Field(
        default=8.0, ge=1.0, le=10.0,
        description="Stop revising once a draft's mean rater score reaches this (1-10); "
        "null: write all max_rounds drafts.")
    max_rounds: int = Field(
        default=2, ge=1, le=MAX_ROUNDS,
        description="Most drafts written: the first draft and up to max_rounds - 1 revisions.")
    min_priority: Priority = Field(
        default=Priority.low,
        description="Suggestions applied in a revision: those of this priority or higher "
        "(low: all). The raters' suggestions count as medium.")


class PipelineSuggestion(BaseModel):
    """One suggestion made on a draft, and whether the next revision applied it."""

    source: str = Field(description='"editor" or "rater:<name>".')
    issue: str | None = None
    suggestion: str
    priority: Priority
    applied: bool = Field(description="Sent to the writer in the next revision.")


class PipelineScore(BaseModel):
    """One rater's verdict on a draft."""

    rater: str
    criteria: list[str]
    score: int = Field(ge=1, le=10)
    opinion: str


class PipelineCall(BaseModel):
    """One agent call the pipeline made (in order)."""

    round: int = Field(description="The draft the call made (draft, revise) or judged "
                       "(review, rate), from 1.")
    phase: Literal["draft", "review", "rate", "revise"]
    generation_id: str | None = Field(default=None, description="The call's own generation "
                                      "record.")
    agent: str
    operation: str
    usage: Usage = Field(description="Tokens; prompt_tokens_details.cached_tokens counts "
                         "the prompt tokens whose KV state was reused (the story's prefix).")
    timings: TimingsOut
    attempts: int
    quality: Quality


class PipelineDraft(BaseModel):
    """One draft with its scores and the suggestions made on it."""

    round: int
    text: str
    quality: Quality
    scores: list[PipelineScore] = Field(default_factory=list)
    mean_score: float | None = Field(default=None, description="Mean of the raters' scores "
                                     "(1-10); null when the draft was not scored.")
    suggestions: list[PipelineSuggestion] = Field(default_factory=list)
    best: bool = Field(default=False, description="The draft to use: the highest mean score "
                       "(the later draft on a tie).")


class PipelineError(BaseModel):
    """The error that ended a pipeline early (the JSON error envelope's fields)."""

    code: str
    message: str
    param: str | None = None
    details: dict[str, object] = Field(default_factory=dict)


class ChapterPipelineResponse(BaseModel):
    """The full record of a pipeline run: every draft with its scores and suggestions, the
    best draft marked, every call with its usage, and the usage per agent."""

    generation_id: str | None = Field(
        default=None, description="The run's generation record (its calls have their own, "
        "in `calls`); null with GENERATIONS_ENABLED off.")
    seed: int | None = Field(
        default=None, description="The run's seed: the request's, or one drawn for it. The "
        "writer's drafts use it; the editor and raters use seeds derived from it, so a "
        "replay repeats every call.")
    model: str
    chapter_number: int
    title: str | None = None
    drafts: list[PipelineDraft]
    best_round: int = Field(description="The round of the best draft.")
    chapter_text: str = Field(description="The best draft's text.")
    stopped_because: Literal["min_score", "max_rounds", "error"]
    error: PipelineError | None = Field(
        default=None, description="Set when a call failed after a draft was written: the "
        "drafts so far are still returned.")
    calls: list[PipelineCall]
    usage: Usage = Field(description="Tokens of every call together.")
    usage_by_agent: dict[str, Usage]
    context_metadata: AssemblyReport = Field(description="The assembly report of the first "
                                             "draft's prompt (what went into it, and why).")
