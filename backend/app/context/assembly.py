"""Context assembly: fit a story context and an agent's task into the window, and report it.

Pure given a token counter: no model, no I/O. The prompt is laid out for KV-cache reuse:

1. **The shared block** (the system message): the preamble and the story context, layer by
   layer. It is the same, byte for byte, for every agent on one story: it does not depend on
   which agent asks, because its budget is planned against one completion reserve
   (``CONTEXT_COMPLETION_RESERVE_TOKENS``) and one task reserve
   (``CONTEXT_TASK_RESERVE_TOKENS``) rather than on the request's own ``max_tokens`` and
   task. A request that needs more than a reserve trims the block further, and the report
   says so (``shared_block_note``).
2. **What differs per agent** comes after it: chat history, then one user message with the
   agent's role, the story elements meant for this agent, phase or character only (elements
   with ``agents``, ``phases`` or a character scope that apply to it), the archive passages
   retrieved for this request, and the task. A task about a chapter of the story refers to
   it where it stands in the shared block ("chapter 2 above") rather than moving it, unless
   the chapter did not fit there whole; then it is quoted in the task instead (and left out
   of the block).

A second agent on the same story therefore shares the whole system message with the first as
a token prefix, and the model's KV state after it can be reused (``app.llm.prefix_cache``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from app.config import ContextSettings, DistillationSettings
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
#: Heading of the archive passages retrieved for one request (in its user message).
ARCHIVE_TITLE = "From the author's archive"
#: Heading of the story elements meant for this agent, phase or character only (in its user
#: message).
SCOPED_TITLE = "For this agent"

#: Extra tokens to shave per correction round when the exact count overshoots the estimate.
_CORRECTION_SLACK = 8


@dataclass(frozen=True)
class AgentTask:
    """What one agent call adds after the shared block.

    ``role``: the agent's role prompt. ``task``: the concrete instruction with the endpoint's
    inputs (never trimmed). ``history``: earlier chat turns, placed between the shared block
    and the task (never trimmed). ``reference``: the id of a context element the task refers
    to where it stands in the shared block (a chapter under review); ``inline_task`` is the
    task with that element quoted in full, used when it did not fit the block whole.
    ``preamble`` opens the shared block; it must be the same for every agent (the team's
    description).
    """

    agent: str
    role: str
    task: str
    history: tuple[ChatMessage, ...] = ()
    reference: str | None = None
    inline_task: str = ""
    preamble: str = SYSTEM_PREAMBLE


@dataclass(frozen=True)
class AssembledPrompt:
    """Messages ready for the generator, and the report of how they were built.

    ``missing`` lists summaries the lookup did not have yet: while it is not empty the prompt is
    provisional (what they stand for is left out); make them and assemble again.
    ``shared_messages``: how many leading messages form the shared block (always 1: the
    system message).
    """

    messages: list[ChatMessage]
    report: AssemblyReport
    missing: list[SummaryJob] = field(default_factory=list)
    shared_messages: int = 1


def build_system(sections: dict[Layer, list[str]], preamble: str = SYSTEM_PREAMBLE) -> str:
    """The shared block: the preamble, then each layer's rendered elements in request order
    (empty layers left out)."""
    parts = [preamble]
    for layer in Layer:
        texts = sections.get(layer)
        if texts:
            separator = "\n\n" if layer is Layer.recent_story else "\n"
            parts.append(f"## {LAYER_TITLES[layer]}\n" + separator.join(texts))
    return "\n\n".join(parts)


def build_messages(task: AgentTask, system: str, passages: list[str] | None = None,
                   scoped: list[str] | None = None) -> list[ChatMessage]:
    """The whole prompt: the shared block, chat history, then role, the elements meant for
    this agent only (``scoped``), archive passages and task in one user message."""
    user = [task.role]
    if scoped:
        user.append(f"## {SCOPED_TITLE}\n" + "\n".join(scoped))
    if passages:
        user.append(f"## {ARCHIVE_TITLE}\n" + "\n".join(passages))
    user.append(task.task)
    return [
        ChatMessage(role="system", content=system),
        *task.history,
        ChatMessage(role="user", content="\n\n".join(user)),
    ]


def assemble(
    elements: Iterable[ContextElement],
    task: AgentTask,
    *,
    counter: TokenCounter,
    context: ContextSettings,
    distillation: DistillationSettings,
    n_ctx: int,
    model: str,
    max_tokens: int,
    completion_reserve: int,
    max_context_tokens: int | None = None,
    summaries: SummaryLookup | None = None,
) -> AssembledPrompt:
    """Fit ``elements`` and ``task`` into the window and report each element's fate.

    Story elements go into the shared block, planned against ``completion_reserve`` (tokens) and the
    task reserve (``context.task_reserve_tokens``) so that it is the same for every agent; elements
    marked ``per_request`` (archive passages, and elements meant for some agents, phases or
    characters only) go after it and get the room that is left (high-priority ones among them are
    reserved like the task); elements marked ``filtered`` are reported and cost nothing. In each
    layer over its budget the lowest-priority elements give way first; high-priority elements never
    do. Without ``summaries`` they are trimmed (at paragraph or sentence boundaries) or dropped.
    With it, story, character and world content is distilled instead (see ``app.context.overflow``);
    summaries the lookup lacks come back in ``missing``. The returned prompt satisfies
    ``prompt_tokens + max_tokens <= window <= n_ctx`` exactly (counted after rendering).

    Raises:
        ContextLengthExceeded: the task plus the high-priority elements do not fit, with
            ``needed_tokens`` and ``available_tokens``.
    """
    elements = list(elements)
    prompt = _Assembly(elements, task, counter, context, distillation, n_ctx, model, max_tokens,
                       completion_reserve, max_context_tokens, summaries).run()
    if task.reference is None:
        return prompt
    kept_whole = any(e.id == task.reference and e.fate is Fate.kept
                     for e in prompt.report.elements)
    if kept_whole:
        return prompt
    inline = replace(task, task=task.inline_task, reference=None)
    return _Assembly(elements, inline, counter, context, distillation, n_ctx, model, max_tokens,
                     completion_reserve, max_context_tokens, summaries,
                     quoted=task.reference).run()


class _Assembly:
    """One assembly pass (see :func:`assemble`). ``quoted``: the id of an element the task
    quotes in full, left out of the shared block."""

    def __init__(self, elements: list[ContextElement], task: AgentTask, counter: TokenCounter,
                 context: ContextSettings, distillation: DistillationSettings, n_ctx: int,
                 model: str, max_tokens: int,
                 completion_reserve: int, max_context_tokens: int | None,
                 summaries: SummaryLookup | None, quoted: str | None = None) -> None:
        self.elements = elements
        self.task = task
        self.counter = counter
        self.context = context
        self.distillation = distillation
        self.n_ctx = n_ctx
        self.model = model
        self.max_tokens = max_tokens
        self.completion_reserve = completion_reserve
        self.max_context_tokens = max_context_tokens
        self.summaries = summaries
        self.quoted = quoted

    def run(self) -> AssembledPrompt:
        counter, task = self.counter, self.task
        window = plan_window(self.context, self.n_ctx, self.max_tokens, self.max_context_tokens)
        slots: list[Slot] = []
        for element in self.elements:
            tokens = counter.count_tokens(element.render())
            if element.filtered:
                slots.append(Slot(element, tokens, None, 0, Fate.filtered,
                                  f"filtered out before budgeting: {element.filtered}"))
                continue
            if element.id == self.quoted:
                slots.append(Slot(element, tokens, None, 0, Fate.dropped,
                                  "it is the task's own input and did not fit whole in the "
                                  "shared block, so the task quotes it in full instead"))
                continue
            if element.scope:
                reason = (f"{element.scope}, so it is placed after the shared block (which "
                          "stays the same for every agent)")
            elif element.per_request:
                reason = "retrieved for this request; placed after the shared block"
            else:
                reason = "fits its layer budget"
            slots.append(Slot(element, tokens, element.text, tokens, Fate.kept, reason))
        shared_slots = [s for s in slots if not s.element.per_request and s.kept_body is not None]
        passage_slots = [s for s in slots if s.element.per_request and s.kept_body is not None]
        # high-priority elements meant for this agent only are never trimmed: reserved like
        # the task
        reserved = [s.element.render() for s in passage_slots
                    if s.element.scope and s.element.priority is Priority.high]

        present = {s.element.layer for s in shared_slots}
        system_skeleton = build_system({layer: [""] for layer in present}, task.preamble)
        system_fixed = counter.count_prompt_tokens([ChatMessage("system", system_skeleton)])
        fixed = counter.count_prompt_tokens(build_messages(task, system_skeleton,
                                                          scoped=reserved or None))
        suffix = fixed - system_fixed
        plan = _SharedPlan.of(window, self.completion_reserve, self.context.task_reserve_tokens,
                              suffix, system_fixed)

        by_layer: dict[Layer, list[Slot]] = {layer: [] for layer in Layer}
        for slot in shared_slots:
            by_layer[slot.element.layer].append(slot)
        required = {
            layer: sum(s.cost for s in group if s.element.priority is Priority.high)
            for layer, group in by_layer.items()
        }
        wanted = {layer: sum(s.cost for s in group) for layer, group in by_layer.items()}
        plan = plan.fitting(sum(required.values()), window, fixed)
        budgets = allocate(plan.capacity, window.shares, required, wanted)
        distillation = None
        if self.summaries is not None:
            distillation = Distillation(
                lookup=self.summaries,
                counter=counter,
                min_tokens=self.distillation.min_summary_tokens,
                chunk_tokens=self.distillation.chunk_summary_tokens,
                verbatim_share=self.distillation.verbatim_share,
                input_limit=max(256, self.n_ctx // 2),
            )
        for layer, group in by_layer.items():
            if distillation is None or layer is Layer.system:
                fit_by_trimming(layer, group, budgets[layer], counter)
            elif layer is Layer.recent_story:
                fit_story_by_distilling(group, budgets[layer], distillation)
            else:
                fit_by_distilling(layer, group, budgets[layer], distillation)
        placed = distillation.summaries if distillation else {}

        system = _render_shared(shared_slots, placed, plan.limit, counter, task.preamble)
        messages, prompt_tokens = _fit_passages(task, system, passage_slots, window, counter)
        shared_tokens = counter.count_prefix_tokens(messages, 1)
        report = AssemblyReport(
            agent=task.agent,
            model=self.model,
            n_ctx=self.n_ctx,
            window_tokens=window.total,
            buffer_tokens=window.buffer,
            max_tokens=window.max_tokens,
            completion_reserve_tokens=plan.completion_reserve,
            task_reserve_tokens=plan.task_reserve,
            fixed_tokens=fixed,
            prompt_tokens=prompt_tokens,
            shared_prefix_tokens=shared_tokens,
            shared_block_note=plan.note,
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
            elements=[_element_report(s) for s in slots],
            summaries=[
                _summary_report(layer, p) for layer, pieces in placed.items() for p in pieces
            ],
        )
        missing = distillation.missing if distillation else []
        return AssembledPrompt(messages=messages, report=report, missing=missing)


@dataclass(frozen=True)
class _SharedPlan:
    """The shared block's room. ``capacity``: tokens its layers may take; ``limit``: exact
    tokens of the system message alone (chat template in) it must fit; ``note``: why this
    request's block differs from the story's standard one (``None``: it does not)."""

    capacity: int
    limit: int
    completion_reserve: int
    task_reserve: int
    system_fixed: int
    note: str | None = None

    @classmethod
    def of(cls, window: Window, completion_reserve: int, task_reserve: int, suffix: int,
           system_fixed: int) -> _SharedPlan:
        reserve = min(completion_reserve, window.total - window.buffer - 1)
        notes = []
        if window.max_tokens > reserve:
            notes.append(f"max_tokens {window.max_tokens} is above the completion reserve of "
                         f"{reserve}")
        if suffix > task_reserve:
            notes.append(f"the task, role, chat history and high-priority elements for this "
                         f"agent only take {suffix} tokens, above the task reserve of "
                         f"{task_reserve}")
        limit = (window.total - window.buffer - max(reserve, window.max_tokens)
                 - max(task_reserve, suffix))
        note = None
        if notes:
            note = ("; ".join(notes) + ", so the shared block was planned smaller for this "
                    "request and may differ from other agents' (its KV state is not shared)")
        return cls(limit - system_fixed, limit, reserve, task_reserve, system_fixed, note)

    def fitting(self, required: int, window: Window, fixed: int) -> _SharedPlan:
        """This plan, or, when the high-priority content does not fit beside the reserves,
        one with only this request's own needs reserved.

        Raises:
            ContextLengthExceeded: it does not fit even then.
        """
        if required <= self.capacity:
            return self
        capacity = window.total - window.max_tokens - window.buffer - fixed
        if required > capacity:
            needed = fixed + required + window.max_tokens + window.buffer
            raise ContextLengthExceeded(
                f"The task and the high-priority context need {needed} tokens "
                f"({fixed} for the task and prompt template, {required} for "
                f"high-priority elements, {window.max_tokens} for max_tokens, {window.buffer} "
                f"buffer) but the context window holds {window.total}. Shorten the task text or "
                "high-priority elements, lower their priority so they may be trimmed, or lower "
                "max_tokens.",
                param="structured_context",
                needed_tokens=needed,
                available_tokens=window.total,
            )
        note = (f"the high-priority context ({required} tokens) does not fit beside the "
                f"completion and task reserves, so the shared block was planned with only "
                "this request's needs reserved and may differ from other agents'")
        return replace(self, capacity=capacity, limit=capacity + self.system_fixed, note=note)


def _element_report(s: Slot) -> ElementReport:
    note = s.element.note
    return ElementReport(
        id=s.element.id,
        kind=s.element.kind,
        label=s.element.label,
        layer=s.element.layer,
        priority=s.element.priority,
        tokens=s.tokens,
        kept_tokens=s.kept_tokens,
        fate=s.fate,
        reason=f"{s.reason}; {note}" if note else s.reason,
        boundary=s.boundary,
        source=s.element.source,
        tags=list(s.element.tags),
        distilled_into=s.distilled_into,
        summary_tokens=s.summary_tokens,
    )


def _summary_report(layer: Layer, p: Summary) -> SummaryReport:
    return SummaryReport(
        id=p.id,
        layer=layer,
        strategy=p.job.strategy.value if p.job else "excerpt",
        level=p.job.level if p.job else 0,
        label=p.label,
        sources=[SummarySourceReport(element_id=src.element_id, start=src.start, end=src.end)
                 for src in p.sources],
        inputs=list(p.inputs),
        source_tokens=p.source_tokens or p.tokens,
        tokens=p.tokens,
        target_tokens=p.job.target_tokens if p.job else p.tokens,
    )


def _fit_passages(task: AgentTask, system: str, slots: list[Slot], window: Window,
                  counter: TokenCounter) -> tuple[list[ChatMessage], int]:
    """The whole prompt with as many of the request's own elements (those for this agent
    only, then archive passages) as fit the room the shared block and the task leave
    (``window.total - max_tokens - buffer``), most important first; the rest are trimmed or
    dropped (reported). High-priority elements are never trimmed or dropped (the shared block
    was planned with room for them). Returns the messages and their exact prompt tokens.

    Raises:
        ContextLengthExceeded: even without the droppable elements the prompt does not fit the
            window.
    """
    bare = build_messages(task, system)
    bare_tokens = counter.count_prompt_tokens(bare)
    room = window.total - window.max_tokens - window.buffer - bare_tokens
    if slots:
        titles = {SCOPED_TITLE if s.element.scope else ARCHIVE_TITLE for s in slots}
        headings = sum(counter.count_tokens(f"## {title}\n") + 2 for title in titles)
        budget = max(0, room - headings)
        fit_by_trimming(Layer.plot_world, slots, budget, counter)
        for slot in slots:
            if slot.element.scope and slot.fate is not Fate.kept:
                slot.reason = (
                    f"{slot.element.scope}, so it goes after the shared block, where the room "
                    f"left ({budget} tokens) ran out and this was the least important element "
                    f"left ({slot.element.priority.value} priority)")
                if slot.fate is Fate.trimmed:
                    part = "end" if slot.element.keep_tail else "start"
                    slot.reason += f"; kept its {part} up to a {slot.boundary} boundary"
    while True:
        scoped = [s.kept_text for s in slots if s.kept_text is not None and s.element.scope]
        kept = [s.kept_text for s in slots if s.kept_text is not None and not s.element.scope]
        messages = build_messages(task, system, kept, scoped)
        prompt_tokens = counter.count_prompt_tokens(messages)
        if prompt_tokens + window.max_tokens <= window.total:
            return messages, prompt_tokens
        candidates = [s for s in slots
                      if s.kept_body is not None and s.element.priority is not Priority.high]
        if not candidates:
            raise ContextLengthExceeded(
                f"The prompt needs {prompt_tokens} tokens but only "
                f"{window.total - window.max_tokens} are available with max_tokens "
                f"{window.max_tokens}; lower max_tokens or shorten the task.",
                param="max_tokens",
                needed_tokens=prompt_tokens + window.max_tokens,
                available_tokens=window.total,
            )
        max(candidates, key=importance).drop(
            "the exact prompt count left no room for it after the shared block and the task")


def _render_shared(
    slots: list[Slot],
    placed: dict[Layer, list[Summary]],
    limit: int,
    counter: TokenCounter,
    preamble: str,
) -> str:
    """Render the shared block from the kept slots and summaries, counted exactly as a prompt
    of its own; shave more if it overshoots ``limit`` tokens.

    Per-element counts are not exactly additive (tokens can merge across joins), so the
    rendered block is counted and, in the rare case it exceeds ``limit``, the least important
    trimmable slot gives up the difference. The result depends only on the story context and
    the plan, never on the agent.
    """
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
        system = build_system(sections, preamble)
        tokens = counter.count_prompt_tokens([ChatMessage("system", system)])
        overshoot = tokens - limit
        if overshoot <= 0:
            return system
        candidates = [
            s for s in slots if s.kept_body is not None and s.element.priority is not Priority.high
        ]
        if not candidates:  # only high-priority content left; the capacity check covers this
            return system
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
