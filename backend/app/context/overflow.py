"""What a layer over its budget gives up: trimmed or dropped text, or distilled summaries.

Two policies, chosen by assembly per layer:

* :func:`fit_by_trimming` (the system layer, and every layer when distillation is off): the
  least important elements are trimmed at a paragraph or sentence boundary, or dropped.
* :func:`fit_by_distilling` (characters, plot and world) and :func:`fit_story_by_distilling`
  (the story so far): what does not fit is summarized instead of dropped. The story keeps its
  newest text verbatim (a rolling window of ``DISTILLATION_VERBATIM_SHARE`` of its budget);
  older text is summarized chapter by chapter, then summaries of summaries while even those do
  not fit (map, then reduce). Dropping is the last resort and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.context.distill import Strategy, SummaryJob, SummaryLookup, SummarySource, strategy_for
from app.context.elements import Layer
from app.context.report import Fate
from app.context.slots import Slot, TokenCounter, cut, importance
from app.context.trim import trim_to_budget
from app.schemas.context import Priority

#: Most levels of summaries of summaries.
_MAX_LEVELS = 6

AWAITING = "awaiting its summary (assembly runs again once the summary is made)"


@dataclass
class Summary:
    """A piece of distilled text placed in the prompt.

    ``job`` is ``None`` for a short excerpt kept as it is (too short to be worth summarizing).
    """

    text: str
    tokens: int
    sources: tuple[SummarySource, ...]
    label: str
    job: SummaryJob | None = None
    inputs: tuple[str, ...] = ()
    source_tokens: int = 0

    @property
    def id(self) -> str:
        if self.job is not None:
            return self.job.id
        first = self.sources[0]
        return f"excerpt-{first.element_id}-{first.start}"

    def render(self, layer: Layer) -> str:
        if layer is Layer.recent_story:
            return f"### {self.label}\n{self.text}"
        return f"- {self.label}: {self.text}"


@dataclass
class Distillation:
    """Settings and shared state of one assembly pass's distillation.

    ``missing`` collects jobs the lookup did not have; ``summaries`` what was placed.
    """

    lookup: SummaryLookup
    counter: TokenCounter
    min_tokens: int
    chunk_tokens: int
    verbatim_share: float
    input_limit: int
    missing: list[SummaryJob] = field(default_factory=list)
    summaries: dict[Layer, list[Summary]] = field(default_factory=dict)

    def resolve(self, job: SummaryJob, inputs: tuple[str, ...] = ()) -> Summary | None:
        """The summary for ``job`` clipped to its target, or None (and noted) if not made yet."""
        text = self.lookup.get(job)
        if text is None:
            self.missing.append(job)
            return None
        count = self.counter.count_tokens
        tokens = count(text)
        if tokens > job.target_tokens:
            clipped = trim_to_budget(text, job.target_tokens, count, keep_tail=False)
            text, tokens = clipped.text, clipped.tokens
        return Summary(text=text, tokens=tokens, sources=job.sources, label=job.label, job=job,
                       inputs=inputs, source_tokens=count(job.text))

    def place(self, layer: Layer, summary: Summary) -> None:
        self.summaries.setdefault(layer, []).append(summary)

    def overhead(self, layer: Layer, label: str) -> int:
        """Tokens a summary's heading or prefix and its joining newline take."""
        return self.counter.count_tokens(Summary("", 0, (), label).render(layer)) + 2


def fit_by_trimming(layer: Layer, slots: list[Slot], budget: int, counter: TokenCounter) -> None:
    """Trim or drop the layer's least important slots until their cost fits ``budget``."""
    excess = sum(s.cost for s in slots) - budget
    for slot in sorted(slots, key=importance, reverse=True):
        if excess <= 0:
            break
        if slot.element.priority is Priority.high or slot.kept_body is None:
            continue
        before = slot.cost
        if before <= excess:
            slot.drop()
        else:
            cut(slot, excess, counter)
            if before - slot.cost < excess:
                # a cut at a boundary could not free enough: it goes whole, before anything
                # more important gives way
                slot.drop()
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


def _mark_distilled(slot: Slot, summary: Summary, reason: str) -> None:
    slot.fate, slot.distilled_into, slot.summary_tokens = Fate.distilled, summary.id, summary.tokens
    slot.reason = reason


def fit_by_distilling(layer: Layer, slots: list[Slot], budget: int, ctx: Distillation) -> None:
    """Summarize the least important elements that do not fit, one summary per strategy.

    The elements that give way are chosen as for trimming (lowest priority first; high
    priority never) but leave whole; the room they leave is shared among their summaries in
    proportion to the text each stands for. A strategy whose share cannot hold a
    ``min_tokens`` summary is dropped (last resort).
    """
    kept_cost = sum(s.cost for s in slots)
    if kept_cost <= budget:
        return
    # room for one summary, its label at its longest (see the labels below)
    longest = (f"Summary of {len(slots)} {layer.value.replace('_', ' ')} elements "
               f"({max((s.value for s in Strategy), key=len)})")
    reserve = ctx.min_tokens + ctx.overhead(layer, longest)
    overflow: list[Slot] = []
    for slot in sorted(slots, key=importance, reverse=True):
        if kept_cost <= budget - reserve:
            break
        if slot.element.priority is Priority.high or slot.kept_body is None:
            continue
        overflow.append(slot)
        kept_cost -= slot.cost
    room = budget - kept_cost
    groups: dict[Strategy, list[Slot]] = {}
    for slot in reversed(overflow):  # most important first, so its group comes first
        groups.setdefault(strategy_for(slot.element), []).append(slot)

    while groups:
        labels = {s: f"Summary of {len(m)} {layer.value.replace('_', ' ')} element"
                  f"{'s' if len(m) > 1 else ''} ({s.value})" for s, m in groups.items()}
        sizes = {s: sum(m.tokens for m in members) for s, members in groups.items()}
        total = sum(sizes.values())
        targets = {
            s: room * sizes[s] // total - ctx.overhead(layer, labels[s]) for s in groups
        }
        starved = [s for s, target in targets.items() if target < ctx.min_tokens]
        if not starved:
            break
        # the least important starved group goes; its share is shared again
        last = starved[-1]
        for slot in groups.pop(last):
            slot.drop(f"the {layer.value} layer had no room left even for a {ctx.min_tokens}-"
                      "token summary of it (last resort)")
    for strategy, members in groups.items():
        members.sort(key=lambda s: s.element.order)
        job = SummaryJob(
            layer=layer, strategy=strategy, level=1,
            text="\n".join(m.element.render() for m in members),
            target_tokens=targets[strategy],
            sources=tuple(SummarySource(m.element.id, 0, len(m.element.text)) for m in members),
            label=labels[strategy],
        )
        summary = ctx.resolve(job)
        for slot in members:
            slot.kept_body, slot.kept_tokens = None, 0
            if summary is None:
                slot.fate, slot.reason = Fate.dropped, AWAITING
            else:
                _mark_distilled(slot, summary, (
                    f"the {layer.value} layer was over its {budget}-token budget; rather than "
                    f"drop this {slot.element.priority.value}-priority element it was distilled "
                    f"with the {strategy.value} strategy"))
        if summary is not None:
            ctx.place(layer, summary)


def _chapter_label(sources: tuple[SummarySource, ...], chapters: dict[str, object]) -> str:
    numbers = sorted({chapters.get(s.element_id) for s in sources} - {None})  # type: ignore[type-var]
    if not numbers:
        return "Summary of earlier story"
    span = f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
    return f"Summary of chapter{'s' if len(numbers) > 1 else ''} {span}"


def fit_story_by_distilling(slots: list[Slot], budget: int, ctx: Distillation) -> None:
    """Keep the newest story text verbatim and summarize the older text into the rest."""
    if sum(s.cost for s in slots) <= budget:
        return
    count = ctx.counter.count_tokens
    chapters = {s.element.id: s.element.source.get("chapter") for s in slots}
    verbatim = int(budget * ctx.verbatim_share)
    used = 0
    older: list[tuple[Slot, int, int]] = []  # (slot, start, end) of text to summarize
    straddled = False
    for slot in sorted(slots, key=lambda s: s.element.order, reverse=True):
        text_length = len(slot.element.text)
        if not straddled and used + slot.cost <= verbatim:
            used += slot.cost
            continue
        if not straddled:
            straddled = True
            room = verbatim - used
            if room > ctx.min_tokens:
                offset = cut(slot, slot.cost - room, ctx.counter)
                if slot.kept_body is not None:
                    used += slot.cost
                    older.append((slot, 0, offset))
                    continue
        older.append((slot, 0, text_length))
        slot.kept_body, slot.kept_tokens = None, 0  # all of it is older text
    older.reverse()  # chronological

    pieces: list[Summary] = []
    for slot, start, end in older:
        text = slot.element.text[start:end].strip()
        if not text:
            continue
        tokens = count(text)
        source = (SummarySource(slot.element.id, start, end),)
        label = _chapter_label(source, chapters)
        target = min(ctx.chunk_tokens, tokens // 2)
        if target < ctx.min_tokens:
            pieces.append(Summary(text, tokens, source, label.replace("Summary of", "From")))
            continue
        job = SummaryJob(Layer.recent_story, strategy_for(slot.element), 1, text, target, source,
                         label)
        summary = ctx.resolve(job)
        if summary is not None:
            pieces.append(summary)

    room = budget - used
    level = 2
    # Each round clips to its target, so one round normally suffices; the cap guards the rest.
    while not ctx.missing and level <= _MAX_LEVELS:
        overhead = ctx.overhead(Layer.recent_story, "Summary of chapters 100-120") + 2
        if sum(p.tokens + overhead for p in pieces) <= room:
            break
        groups = _group(pieces, ctx.input_limit)
        if (room // len(groups)) - overhead < ctx.min_tokens:
            fewer = max(1, room // (ctx.min_tokens + overhead))
            if room < ctx.min_tokens + overhead:
                break  # not even one summary fits: the older text is dropped below
            groups = _split_evenly(pieces, fewer)
        target = room // len(groups) - overhead
        reduced: list[Summary] = []
        for group in groups:
            if len(group) == 1 and group[0].tokens <= target:
                reduced.append(group[0])
                continue
            sources = tuple(source for piece in group for source in piece.sources)
            strategies = {p.job.strategy for p in group if p.job is not None}
            strategy = Strategy.dialogue if strategies == {Strategy.dialogue} else Strategy.plot
            job = SummaryJob(Layer.recent_story, strategy, level,
                             "\n\n".join(p.text for p in group), target, sources,
                             _chapter_label(sources, chapters))
            summary = ctx.resolve(job, inputs=tuple(p.id for p in group))
            if summary is not None:
                reduced.append(summary)
        pieces = reduced
        level += 1

    fits = sum(p.tokens + ctx.overhead(Layer.recent_story, p.label) for p in pieces) <= room
    owner = {source.element_id: piece for piece in pieces for source in piece.sources}
    for slot, _start, _end in older:
        if ctx.missing:
            if slot.kept_body is None:
                slot.fate, slot.reason = Fate.dropped, AWAITING
            continue
        piece = owner.get(slot.element.id)
        if not fits or piece is None:
            slot.drop("the story so far had no room left for even a summary of its older text "
                      "(last resort)")
            continue
        kept = slot.kept_body is not None
        _mark_distilled(slot, piece, (
            "older than the newest story text kept verbatim"
            + (f"; its last {slot.kept_tokens} tokens are kept verbatim up to a "
               f"{slot.boundary} boundary and the rest" if kept else "")
            + f" was distilled into '{piece.label}' (level "
            + f"{piece.job.level if piece.job else 0})"))
    if fits and not ctx.missing:
        for piece in pieces:
            ctx.place(Layer.recent_story, piece)


def _group(pieces: list[Summary], limit: int) -> list[list[Summary]]:
    """Consecutive groups of pieces whose joined text stays within ``limit`` tokens."""
    groups: list[list[Summary]] = [[]]
    size = 0
    for piece in pieces:
        if groups[-1] and size + piece.tokens > limit:
            groups.append([])
            size = 0
        groups[-1].append(piece)
        size += piece.tokens
    return groups


def _split_evenly(pieces: list[Summary], count: int) -> list[list[Summary]]:
    """``count`` consecutive groups of about equal size (in pieces)."""
    count = min(count, len(pieces))
    step = len(pieces) / count
    return [pieces[round(i * step):round((i + 1) * step)] for i in range(count)]

