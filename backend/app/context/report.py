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
    dropped = "dropped"


class ElementReport(BaseModel):
    """One input element and its fate."""

    id: str = Field(description="Where the element is in the request, e.g. plot_elements[0].")
    kind: str
    label: str
    layer: Layer
    priority: Priority
    tokens: int = Field(description="Tokens of the element as given (rendered, heading in).")
    kept_tokens: int = Field(description="Tokens of it that reached the prompt (0 if dropped).")
    fate: Fate
    reason: str = Field(description="Why it was kept, trimmed or dropped, in a sentence.")
    boundary: str | None = Field(
        default=None, description="For trimmed elements: paragraph or sentence."
    )
    source: dict[str, Any] = Field(default_factory=dict, description="Extra provenance.")


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
    fixed_tokens: int = Field(
        description="Chat template, section headings, agent role and task: never trimmed."
    )
    prompt_tokens: int = Field(description="Exact prompt tokens, chat template included.")
    layers: list[LayerReport]
    elements: list[ElementReport]
