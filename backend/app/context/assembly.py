"""Context assembly: fit an agent's context into the window and report what happened.

Pure given a token counter: no model, no I/O. Prompt layout, for KV-cache reuse: the system
message holds what every agent shares (the story context, layer by layer); the user message
holds what differs (the agent's role, then its task). A second agent on the same story whose
context fits therefore shares the whole system message with the first as a token prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app.config import Settings
from app.context.budget import Window, allocate, plan_window
from app.context.distill import SummaryJob, SummaryLookup
from app.context.elements import LAYER_TITLES, ContextElement, Layer
from app.context.overflow import (
    Distillation,
    Summary,
    fit_by_distilling,
    fit_by_trimming,
    fit_story_by_distilling,
)
from app.context.report import (
    AssemblyReport,
    ElementReport,
    Fate,
    LayerReport,
    SummaryReport,
    SummarySourceReport,
)
from app.context.slots import Slot, TokenCounter, cut, importance
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
    """Messages ready for the generator, and the report of how they were built.

    ``missing`` lists summaries the lookup did not have yet: while it is not empty the prompt is
    provisional (what they stand for is left out); make them and assemble again.
    """

    messages: list[ChatMessage]
    report: AssemblyReport
    missing: list[SummaryJob] = field(default_factory=list)


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
    summaries: SummaryLookup | None = None,
) -> AssembledPrompt:
    """Fit ``elements`` and ``task`` into the window and report each element's fate.

    Elements of layers the agent does not read, and those whose id is in ``exclude`` (already
    part of the task), are dropped and reported. In each layer over its budget the
    lowest-priority elements give way first; high-priority elements never do. Without
    ``summaries`` they are trimmed (at paragraph or sentence boundaries) or dropped. With it,
    story, character and world content is distilled instead (see ``app.context.overflow``);
    summaries the lookup lacks come back in ``missing``. The returned prompt satisfies
    ``prompt_tokens + max_tokens <= window <= n_ctx`` exactly (counted after rendering).

    Raises:
        ContextLengthExceeded: the task plus the high-priority elements do not fit, with
            ``needed_tokens`` and ``available_tokens``.
    """
    window = plan_window(settings, n_ctx, max_tokens, max_context_tokens)
    slots: list[Slot] = []
    for element in elements:
        tokens = counter.count_tokens(element.render())
        if element.id in exclude:
            reason = "it is the task's own input, so it is in the task instead"
        elif element.layer not in task.layers:
            reason = f"the {task.agent} agent does not read the {element.layer.value} layer"
        else:
            slots.append(Slot(element, tokens, element.text, tokens, Fate.kept, "fits its layer budget"))
            continue
        slots.append(Slot(element, tokens, None, 0, Fate.dropped, reason))

    present = {s.element.layer for s in slots if s.kept_body is not None}
    skeleton = build_messages(task, {layer: [""] for layer in present})
    fixed = counter.count_prompt_tokens(skeleton)
    capacity = window.total - window.max_tokens - window.buffer - fixed

    by_layer: dict[Layer, list[Slot]] = {layer: [] for layer in Layer}
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
    distillation = None
    if summaries is not None:
        distillation = Distillation(
            lookup=summaries,
            counter=counter,
            min_tokens=settings.distillation_min_summary_tokens,
            chunk_tokens=settings.distillation_chunk_summary_tokens,
            verbatim_share=settings.distillation_verbatim_share,
            input_limit=max(256, n_ctx // 2),
        )
    for layer, group in by_layer.items():
        if distillation is None or layer is Layer.system:
            fit_by_trimming(layer, group, budgets[layer], counter)
        elif layer is Layer.recent_story:
            fit_story_by_distilling(group, budgets[layer], distillation)
        else:
            fit_by_distilling(layer, group, budgets[layer], distillation)
    placed = distillation.summaries if distillation else {}

    messages, prompt_tokens = _render_exact(task, slots, placed, window, counter)
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
                used_tokens=sum(s.cost for s in by_layer[layer]) + sum(
                    p.tokens + 1 for p in placed.get(layer, [])),
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
                distilled_into=s.distilled_into,
                summary_tokens=s.summary_tokens,
            )
            for s in slots
        ],
        summaries=[
            SummaryReport(
                id=p.id,
                layer=layer,
                strategy=p.job.strategy.value if p.job else "excerpt",
                level=p.job.level if p.job else 0,
                label=p.label,
                sources=[SummarySourceReport(element_id=src.element_id, start=src.start,
                                             end=src.end) for src in p.sources],
                inputs=list(p.inputs),
                source_tokens=p.source_tokens or p.tokens,
                tokens=p.tokens,
                target_tokens=p.job.target_tokens if p.job else p.tokens,
            )
            for layer, pieces in placed.items()
            for p in pieces
        ],
    )
    missing = distillation.missing if distillation else []
    return AssembledPrompt(messages=messages, report=report, missing=missing)


def _render_exact(
    task: AgentTask,
    slots: list[Slot],
    placed: dict[Layer, list[Summary]],
    window: Window,
    counter: TokenCounter,
) -> tuple[list[ChatMessage], int]:
    """Render the kept slots and count the prompt exactly; shave more if it overshoots.

    Per-element counts are not exactly additive (tokens can merge across joins), so the
    rendered prompt is counted and, in the rare case it exceeds ``window.total -
    max_tokens``, the least important trimmable slot gives up the difference.
    """
    limit = window.total - window.max_tokens
    while True:
        # Story summaries stand for older text, so they come before the verbatim chapters;
        # other layers' summaries follow what was kept whole.
        sections: dict[Layer, list[str]] = {
            Layer.recent_story: [p.render(Layer.recent_story)
                                 for p in placed.get(Layer.recent_story, [])]
        }
        for slot in slots:
            if slot.kept_text is not None:
                sections.setdefault(slot.element.layer, []).append(slot.kept_text)
        for layer, pieces in placed.items():
            if layer is not Layer.recent_story:
                sections.setdefault(layer, []).extend(p.render(layer) for p in pieces)
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
        slot = max(candidates, key=importance)
        before = slot.cost
        if before <= overshoot + _CORRECTION_SLACK:
            slot.drop()
        else:
            cut(slot, overshoot + _CORRECTION_SLACK, counter)
        slot.reason = (
            f"the exact prompt count overshot the estimate by {overshoot} tokens; the least "
            "important element gave them up"
        )
