"""Distillation: what a summary must keep, and the summary jobs assembly asks for.

Assembly stays pure: when a layer overflows it asks a :class:`SummaryLookup` for the summary
of the overflowing text. A summary the lookup does not have yet is returned as a missing
:class:`SummaryJob`; the caller (``app.context.summaries.Distiller``) runs the jobs with the
model, caches them, and assembles again. A job is identified by its input text, strategy and
target length, so the same story always asks for the same summaries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from app.context.elements import ContextElement, Layer


class Strategy(str, Enum):
    """Kinds of content, each summarized with its own instructions and temperature."""

    plot = "plot"
    character = "character"
    dialogue = "dialogue"
    scene = "scene"
    world = "world"
    feedback = "feedback"


#: What each strategy's summary must keep (the instruction given to the model).
GUIDANCE: dict[Strategy, str] = {
    Strategy.plot: (
        "Keep every named character, every event in order with its cause and consequence, "
        "and every open thread or unanswered question."
    ),
    Strategy.character: (
        "Keep each character's name, role, traits, goals, current state and relationships."
    ),
    Strategy.dialogue: (
        "Keep who spoke to whom, what each wanted, what was decided or revealed, and the one "
        "or two lines that matter most, quoted."
    ),
    Strategy.scene: (
        "Keep the place, time, atmosphere, who is present and what each is doing."
    ),
    Strategy.world: (
        "Keep the rules of the world, places, institutions, history and facts the story "
        "relies on."
    ),
    Strategy.feedback: (
        "Keep every distinct request or criticism, as a short imperative, with its priority."
    ),
}

_PLOT_TYPES = {"plot_point", "plot_outline", "chapter_outline", "conflict", "goal",
               "foreshadowing", "setup", "twist", "payoff", "climax", "resolution", "subplot",
               "transition"}
_SCENE_TYPES = {"scene", "setting"}
_QUOTE = re.compile(r"[\"“”‘’']([^\"“”‘’']{2,400})[\"“”‘’']")
#: A story text whose quoted speech is at least this share of its characters is dialogue.
DIALOGUE_SHARE = 0.4


def strategy_for(element: ContextElement) -> Strategy:
    """The strategy that fits an element's content type."""
    content_type = element.content_type
    if content_type == "character":
        return Strategy.character
    if content_type == "chapter":
        quoted = sum(len(m.group(1)) for m in _QUOTE.finditer(element.text))
        return Strategy.dialogue if quoted >= DIALOGUE_SHARE * len(element.text) else Strategy.plot
    if content_type == "feedback":
        return Strategy.feedback
    if content_type in _SCENE_TYPES:
        return Strategy.scene
    if content_type in _PLOT_TYPES:
        return Strategy.plot
    return Strategy.world


@dataclass(frozen=True)
class SummarySource:
    """A character range ``[start, end)`` of one element's text that a summary stands for."""

    element_id: str
    start: int
    end: int


@dataclass(frozen=True)
class SummaryJob:
    """One summary to make: ``text`` condensed to at most ``target_tokens`` tokens.

    ``level`` is 1 for a summary of source text and 2+ for a summary of summaries; ``sources``
    is the provenance (the union of its inputs' sources).
    """

    layer: Layer
    strategy: Strategy
    level: int
    text: str
    target_tokens: int
    sources: tuple[SummarySource, ...]
    label: str

    @property
    def digest(self) -> str:
        """Stable id of the job's input: sha256 over strategy, target and text."""
        payload = f"{self.strategy.value}\x00{self.target_tokens}\x00{self.text}"
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def id(self) -> str:
        """Short id used in the report, e.g. ``summary-1a2b3c4d``."""
        return f"summary-{self.digest[:8]}"


class SummaryLookup(Protocol):
    """Where assembly finds summaries; ``None`` means not made yet."""

    def get(self, job: SummaryJob) -> str | None: ...
