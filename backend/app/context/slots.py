"""Working state of one element during assembly, and the order in which elements give way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.context.elements import PRIORITY_RANK, ContextElement
from app.context.report import Fate
from app.context.trim import trim_to_budget
from app.llm.protocol import ChatMessage

#: Tokens of the ``[...]`` marker a trimmed element carries.
MARKER_TOKENS = 3


class TokenCounter(Protocol):
    """The counts assembly needs from the served model (see ``TextGenerator``)."""

    def count_tokens(self, text: str) -> int: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int: ...

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int: ...


@dataclass
class Slot:
    """One element's fate while it is being assembled.

    ``kept_body`` is the part of the element's text in the prompt (``None``: none of it);
    ``kept_tokens`` its rendered tokens; ``distilled_into`` the summary standing for the rest.
    """

    element: ContextElement
    tokens: int
    kept_body: str | None
    kept_tokens: int
    fate: Fate
    reason: str
    boundary: str | None = None
    distilled_into: str | None = None
    summary_tokens: int | None = None

    @property
    def kept_text(self) -> str | None:
        """The element as rendered into the prompt now, or None when none of it is."""
        if self.kept_body is None:
            return None
        marked = self.fate in (Fate.trimmed, Fate.distilled)
        return self.element.render(self.kept_body, trimmed=marked)

    @property
    def cost(self) -> int:
        """Tokens it takes in the prompt, +1 for the newline joining it to its neighbours."""
        return self.kept_tokens + 1 if self.kept_body is not None else 0

    def drop(self, reason: str | None = None) -> None:
        self.kept_body, self.kept_tokens, self.fate, self.boundary = None, 0, Fate.dropped, None
        if reason:
            self.reason = reason


def importance(slot: Slot) -> tuple[int, int]:
    """Sort key, most important first. For story text (keep_tail) newer beats older."""
    element = slot.element
    return PRIORITY_RANK[element.priority], (-element.order if element.keep_tail else element.order)


def cut(slot: Slot, tokens_to_free: int, counter: TokenCounter) -> int:
    """Trim a kept slot by at least ``tokens_to_free`` tokens at a boundary, or drop it.

    Returns the character offset in the element's text where the kept part starts (keep_tail)
    or ends (keep head); for a dropped slot the whole text is cut.
    """
    element = slot.element
    heading_tokens = counter.count_tokens(element.heading) + 1 if element.heading else 0
    target = slot.kept_tokens - tokens_to_free - heading_tokens - MARKER_TOKENS
    body = slot.kept_body if slot.kept_body is not None else element.text
    result = trim_to_budget(body, target, counter.count_tokens, keep_tail=element.keep_tail)
    if not result.text:
        slot.drop()
        return len(element.text) if element.keep_tail else 0
    slot.kept_body, slot.fate, slot.boundary = result.text, Fate.trimmed, result.boundary
    slot.kept_tokens = counter.count_tokens(slot.kept_text or "")
    # kept_body may itself be a cut of the text; find where this cut lies in the original
    offset = element.text.find(body)
    return offset + (result.start if element.keep_tail else result.end)
