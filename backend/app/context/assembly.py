"""Context assembly: fit an agent's context into the window and report what happened.

Pure given a token counter: no model, no I/O. Prompt layout, for KV-cache reuse: the system
message holds what every agent shares (the story context, layer by layer); the user message
holds what differs (the agent's role, then its task). A second agent on the same story whose
context fits therefore shares the whole system message with the first as a token prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.config import Settings
from app.context.budget import Window, allocate, plan_window
from app.context.elements import LAYER_TITLES, PRIORITY_RANK, ContextElement, Layer
from app.context.report import AssemblyReport, ElementReport, Fate, LayerReport
from app.context.trim import trim_to_budget
from app.errors import ContextLengthExceeded
from app.llm.protocol import ChatMessage
from app.schemas.context import Priority

SYSTEM_PREAMBLE = (
    "You are Writer Assistant, a team of fiction-writing agents (writer, editor, character and "
    "rater) helping an author with one story. The story context below is the author's; stay "
    "true to it."
)

#: Extra tokens to shave per correction round when the exact count overshoots the estimate.
_CORRECTION_SLACK = 8


class TokenCounter(Protocol):
    """The two counts assembly needs from the served model (see ``TextGenerator``)."""

    def count_tokens(self, text: str) -> int: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int: ...


@dataclass(frozen=True)
class AgentTask:
    """What one agent call adds to the shared context.

    ``role``: the agent's role prompt. ``task``: the concrete instruction with the endpoint's
    inputs (never trimmed). ``layers``: the context layers the agent reads. ``history``:
    earlier chat turns, placed between the shared context and the task (never trimmed).
    """

    agent: str
    role: str
    task: str
    layers: frozenset[Layer]
    history: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class AssembledPrompt:
    """Messages ready for the generator, and the report of how they were built."""

    messages: list[ChatMessage]
    report: AssemblyReport


@dataclass
class _Slot:
    """Working state of one element during assembly."""

    element: ContextElement
    tokens: int
    kept_body: str | None  # None: dropped
    kept_tokens: int
    fate: Fate
    reason: str
    boundary: str | None = None

    @property
    def kept_text(self) -> str | None:
        """The element as rendered into the prompt now, or None when dropped."""
        if self.kept_body is None:
            return None
        return self.element.render(self.kept_body, trimmed=self.fate is Fate.trimmed)

    def drop(self) -> None:
        self.kept_body, self.kept_tokens, self.fate, self.boundary = None, 0, Fate.dropped, None

    @property
    def cost(self) -> int:
        # +1 for the newline that joins it to its neighbours
        return self.kept_tokens + 1 if self.kept_body is not None else 0


def _importance(slot: _Slot) -> tuple[int, int]:
    """Sort key, most important first. For story text (keep_tail) newer beats older."""
    element = slot.element
    return PRIORITY_RANK[element.priority], (-element.order if element.keep_tail else element.order)


def build_messages(
    task: AgentTask, sections: dict[Layer, list[str]], preamble: str = SYSTEM_PREAMBLE
) -> list[ChatMessage]:
    """Lay out the prompt: shared context in the system message, role and task last.

    ``sections`` maps each layer to its rendered elements, in request order; empty layers are
    left out.
    """
    parts = [preamble]
    for layer in Layer:
        texts = sections.get(layer)
        if texts:
            separator = "\n\n" if layer is Layer.recent_story else "\n"
            parts.append(f"## {LAYER_TITLES[layer]}\n" + separator.join(texts))
    return [
        ChatMessage(role="system", content="\n\n".join(parts)),
        *task.history,
        ChatMessage(role="user", content=f"{task.role}\n\n{task.task}"),
    ]


def _cut(slot: _Slot, tokens_to_free: int, count: TokenCounter) -> None:
    """Free at least ``tokens_to_free`` tokens from a kept slot by trimming it, or drop it."""
    element = slot.element
    heading_tokens = count.count_tokens(element.heading) + 1 if element.heading else 0
    marker_tokens = 3  # the "[...]" marker
    target = slot.kept_tokens - tokens_to_free - heading_tokens - marker_tokens
    body = slot.kept_body if slot.kept_body is not None else element.text
    result = trim_to_budget(body, target, count.count_tokens, keep_tail=element.keep_tail)
    if not result.text:
        slot.drop()
        return
    slot.kept_body, slot.fate, slot.boundary = result.text, Fate.trimmed, result.boundary
    slot.kept_tokens = count.count_tokens(slot.kept_text or "")


def _fit_layer(
    layer: Layer, slots: list[_Slot], budget: int, count: TokenCounter
) -> None:
    """Trim or drop the layer's least important slots until their cost fits ``budget``."""
    excess = sum(s.cost for s in slots) - budget
    for slot in sorted(slots, key=_importance, reverse=True):
        if excess <= 0:
            break
        if slot.element.priority is Priority.high or slot.kept_body is None:
            continue
        before = slot.cost
        if before <= excess:
            slot.drop()
        else:
            _cut(slot, excess, count)
        excess -= before - slot.cost
        slot.reason = (
            f"the {layer.value} layer was over its {budget}-token budget and this was the "
            f"least important {'story text' if slot.element.keep_tail else 'element'} left "
            f"({slot.element.priority.value} priority"
            + (", older text first" if slot.element.keep_tail else ", lowest priority first")
            + ")"
        )
        if slot.fate is Fate.trimmed:
            part = "end" if slot.element.keep_tail else "start"
            slot.reason += f"; kept its {part} up to a {slot.boundary} boundary"


def assemble(
    elements: Iterable[ContextElement],
    task: AgentTask,
    *,
    counter: TokenCounter,
    settings: Settings,
    n_ctx: int,
    model: str,
    max_tokens: int,
    max_context_tokens: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> AssembledPrompt:
    """Fit ``elements`` and ``task`` into the window and report each element's fate.

    Elements of layers the agent does not read, and those whose id is in ``exclude`` (already
    part of the task), are dropped and reported. In each layer the
    lowest-priority elements are trimmed (at paragraph or sentence boundaries) or dropped
    first; high-priority elements never are. The returned prompt satisfies
    ``prompt_tokens + max_tokens <= window <= n_ctx`` exactly (counted after rendering).

    Raises:
        ContextLengthExceeded: the task plus the high-priority elements do not fit, with
            ``needed_tokens`` and ``available_tokens``.
    """
    window = plan_window(settings, n_ctx, max_tokens, max_context_tokens)
    slots: list[_Slot] = []
    for element in elements:
        tokens = counter.count_tokens(element.render())
        if element.id in exclude:
            reason = "it is the task's own input, so it is in the task instead"
        elif element.layer not in task.layers:
            reason = f"the {task.agent} agent does not read the {element.layer.value} layer"
        else:
            slots.append(_Slot(element, tokens, element.text, tokens, Fate.kept, "fits its layer budget"))
            continue
        slots.append(_Slot(element, tokens, None, 0, Fate.dropped, reason))

    present = {s.element.layer for s in slots if s.kept_body is not None}
    skeleton = build_messages(task, {layer: [""] for layer in present})
    fixed = counter.count_prompt_tokens(skeleton)
    capacity = window.total - window.max_tokens - window.buffer - fixed

    by_layer: dict[Layer, list[_Slot]] = {layer: [] for layer in Layer}
    for slot in slots:
        if slot.kept_body is not None:
            by_layer[slot.element.layer].append(slot)
    required = {
        layer: sum(s.cost for s in group if s.element.priority is Priority.high)
        for layer, group in by_layer.items()
    }
    wanted = {layer: sum(s.cost for s in group) for layer, group in by_layer.items()}
    if sum(required.values()) > capacity:
        needed = fixed + sum(required.values()) + window.max_tokens + window.buffer
        raise ContextLengthExceeded(
            f"The task and the high-priority context need {needed} tokens "
            f"({fixed} for the task and prompt template, {sum(required.values())} for "
            f"high-priority elements, {window.max_tokens} for max_tokens, {window.buffer} "
            f"buffer) but the context window holds {window.total}. Shorten the task text or "
            "high-priority elements, lower their priority so they may be trimmed, or lower "
            "max_tokens.",
            param="structured_context",
            needed_tokens=needed,
            available_tokens=window.total,
        )
    budgets = allocate(capacity, window.shares, required, wanted)
    for layer, group in by_layer.items():
        _fit_layer(layer, group, budgets[layer], counter)

    messages, prompt_tokens = _render_exact(task, slots, window, counter)
    report = AssemblyReport(
        agent=task.agent,
        model=model,
        n_ctx=n_ctx,
        window_tokens=window.total,
        buffer_tokens=window.buffer,
        max_tokens=window.max_tokens,
        fixed_tokens=fixed,
        prompt_tokens=prompt_tokens,
        layers=[
            LayerReport(
                layer=layer,
                share_tokens=window.shares[layer],
                budget_tokens=budgets[layer],
                requested_tokens=wanted[layer],
                used_tokens=sum(s.cost for s in by_layer[layer]),
            )
            for layer in Layer
        ],
        elements=[
            ElementReport(
                id=s.element.id,
                kind=s.element.kind,
                label=s.element.label,
                layer=s.element.layer,
                priority=s.element.priority,
                tokens=s.tokens,
                kept_tokens=s.kept_tokens,
                fate=s.fate,
                reason=s.reason,
                boundary=s.boundary,
                source=s.element.source,
            )
            for s in slots
        ],
    )
    return AssembledPrompt(messages=messages, report=report)


def _render_exact(
    task: AgentTask, slots: list[_Slot], window: Window, counter: TokenCounter
) -> tuple[list[ChatMessage], int]:
    """Render the kept slots and count the prompt exactly; shave more if it overshoots.

    Per-element counts are not exactly additive (tokens can merge across joins), so the
    rendered prompt is counted and, in the rare case it exceeds ``window.total -
    max_tokens``, the least important trimmable slot gives up the difference.
    """
    limit = window.total - window.max_tokens
    while True:
        sections: dict[Layer, list[str]] = {}
        for slot in slots:
            if slot.kept_text is not None:
                sections.setdefault(slot.element.layer, []).append(slot.kept_text)
        messages = build_messages(task, sections)
        prompt_tokens = counter.count_prompt_tokens(messages)
        overshoot = prompt_tokens - limit
        if overshoot <= 0:
            return messages, prompt_tokens
        candidates = [
            s for s in slots if s.kept_body is not None and s.element.priority is not Priority.high
        ]
        if not candidates:  # only high-priority content left; the capacity check covers this
            raise ContextLengthExceeded(
                f"The prompt needs {prompt_tokens} tokens but only {limit} are available "
                f"with max_tokens {window.max_tokens}; lower max_tokens.",
                param="max_tokens",
                needed_tokens=prompt_tokens + window.max_tokens,
                available_tokens=window.total,
            )
        slot = max(candidates, key=_importance)
        before = slot.cost
        if before <= overshoot + _CORRECTION_SLACK:
            slot.drop()
        else:
            _cut(slot, overshoot + _CORRECTION_SLACK, counter)
        slot.reason = (
            f"the exact prompt count overshot the estimate by {overshoot} tokens; the least "
            "important element gave them up"
        )
