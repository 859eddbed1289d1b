"""The assembly report: what went into the prompt, what did not, and why.

Returned as ``context_metadata`` by every agent endpoint and by ``/context/preview``. All token
figures are model tokens counted with the served model's tokenizer.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from app.context.elements import Layer
from app.schemas.context import Priority


class Fate(str, Enum):
    """What assembly did with an element."""

    kept = "kept"
    trimmed = "trimmed"
    distilled = "distilled"
    dropped = "dropped"
    #: left out before budgeting by a rule of the request (tags, phase, agent, character
    #: scope); it cost nothing.
    filtered = "filtered"


class ElementReport(BaseModel):
    """One input element and its fate."""

    id: str = Field(description="Where the element is in the request, e.g. plot_elements[0].")
    kind: str
    label: str
    layer: Layer
    priority: Priority
    tokens: int = Field(description="Tokens of the element as given (rendered, heading in).")
    kept_tokens: int = Field(
        description="Tokens of it that reached the prompt (0 if dropped or filtered).")
    fate: Fate
    reason: str = Field(
        description="Why it was kept, trimmed, distilled, dropped or filtered, in a sentence "
        "(a filtered element's names the rule: tag excluded, tags not included, agent, phase "
        "or character scope).")
    boundary: str | None = Field(
        default=None, description="For trimmed elements: paragraph or sentence."
    )
    source: dict[str, Any] = Field(default_factory=dict, description="Extra provenance.")
    tags: list[str] = Field(default_factory=list, description="The element's tags.")
    distilled_into: str | None = Field(
        default=None, description="For distilled elements: the id of the summary standing for it."
    )
    summary_tokens: int | None = Field(
        default=None, description="Tokens of that summary (it may stand for several elements)."
    )


class SummarySourceReport(BaseModel):
    """A character range ``[start, end)`` of an element's text that a summary stands for."""

    element_id: str
    start: int
    end: int


class SummaryReport(BaseModel):
    """One summary in the prompt and what it stands for."""

    id: str
    layer: Layer
    strategy: str
    level: int = Field(description="1: a summary of source text; 2 and up: of summaries.")
    label: str
    sources: list[SummarySourceReport]
    inputs: list[str] = Field(
        default_factory=list, description="Ids of the summaries it condenses (level 2 and up)."
    )
    source_tokens: int = Field(description="Tokens of the text it condenses.")
    tokens: int = Field(description="Tokens of the summary, clipped to its target.")
    target_tokens: int


class DistillationStats(BaseModel):
    """Model work done to distill this request's context."""

    llm_calls: int = Field(default=0, description="Summarization calls made for this request.")
    cache_hits: int = Field(default=0, description="Summaries found in the summary cache.")
    seconds: float = Field(default=0.0, description="Wall-clock seconds spent distilling.")


class LayerReport(BaseModel):
    """Budget figures of one layer, in tokens."""

    layer: Layer
    share_tokens: int = Field(description="Configured budget scaled to this request's window.")
    budget_tokens: int = Field(description="Budget after surplus from other layers was shared.")
    requested_tokens: int = Field(description="Tokens its elements would take in full.")
    used_tokens: int = Field(description="Tokens its kept elements take.")


class AssemblyReport(BaseModel):
    """How one prompt was assembled. Invariant: ``prompt_tokens + max_tokens <= window_tokens
    <= n_ctx``."""

    agent: str
    model: str
    n_ctx: int = Field(description="The model's context window in tokens.")
    window_tokens: int = Field(description="Effective window for this request.")
    buffer_tokens: int
    max_tokens: int = Field(description="Completion tokens reserved.")
    completion_reserve_tokens: int = Field(
        default=0,
        description="Completion tokens the shared block was planned against "
        "(CONTEXT_COMPLETION_RESERVE_TOKENS), the same for every agent.",
    )
    task_reserve_tokens: int = Field(
        default=0,
        description="Tokens kept after the shared block for role, task, history and archive "
        "passages (CONTEXT_TASK_RESERVE_TOKENS).",
    )
    fixed_tokens: int = Field(
        description="Chat template, section headings, agent role and task: never trimmed."
    )
    prompt_tokens: int = Field(description="Exact prompt tokens, chat template included.")
    shared_prefix_tokens: int = Field(
        default=0,
        description="Leading prompt tokens of the shared block (the system message with the "
        "story context): identical for every agent on this story, so their KV state is reused.",
    )
    shared_block_note: str | None = Field(
        default=None,
        description="Why this request's shared block was planned smaller than the story's "
        "standard one (so its KV state is not shared); null when it was not.",
    )
    max_tokens_note: str | None = Field(
        default=None,
        description="Why max_tokens is below the default this request would have had: scaled "
        "to a quarter of the window, or capped at the operation's limit; null when it is not.",
    )
    layers: list[LayerReport]
    elements: list[ElementReport]
    summaries: list[SummaryReport] = Field(default_factory=list)
    distillation: DistillationStats = Field(default_factory=DistillationStats)
