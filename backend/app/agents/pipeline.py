"""The chapter pipeline: the writer drafts a chapter, the editor suggests changes and the
author's raters score it, the writer revises it with the selected suggestions; again until the
mean score reaches ``min_score`` or ``max_rounds`` drafts were written.

Every step is an ordinary agent call through :class:`~app.agents.runner.AgentRunner` (its own
turn at the model's queue, the same sampling, content check and report), on the same
``structured_context``: each agent's prompt opens with the story's shared block, so after the
first call the prefix KV state cache serves it and only the agent's task is processed
(``usage.prompt_tokens_details.cached_tokens`` of every call in ``calls``).

The original Writer Assistant's generate, evaluate, refine loop lost its draft when a later
step failed; here a failure after the first draft ends the run with every draft so far and
the error (``stopped_because: "error"``), and only a failure of the first draft is an error
answer.

Events of the stream, in order: per round ``phase`` (``draft`` or ``revise``), ``progress``
(distillation steps), ``token`` (the draft's text as it is written), ``draft``; then ``phase``
``review`` and a ``suggestion`` per editor suggestion; per rater ``phase`` ``rate``, ``score``
and its ``suggestion``s; last one ``done`` carrying the full record (or ``error`` when the
first draft failed).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from app.agents.events import DONE, PROGRESS, TOKEN, Events, quality
from app.agents.runner import AgentRunner, Meta, Progress, story_id_of
from app.agents.spec import AgentResult, AgentSpec
from app.context.report import AssemblyReport
from app.errors import GenerationFailed, WriterAssistantError
from app.generations.recorder import draw_seed, new_generation_id, now_utc
from app.generations.records import (
    GenerationRecord,
    ModelRecord,
    SamplingRecord,
    request_json,
    request_sha256,
)
from app.llm.protocol import TokenDelta
from app.schemas.context import Chapter, Priority, StructuredContext
from app.schemas.pipeline import (
    ChapterPipelineRequest,
    ChapterPipelineResponse,
    PipelineCall,
    PipelineDraft,
    PipelineError,
    PipelineScore,
    PipelineSuggestion,
)
from app.schemas.requests import (
    EditorReviewRequest,
    GenerateChapterRequest,
    ModifyChapterRequest,
    RaterFeedbackRequest,
)
from app.schemas.responses import TimingsOut
from app.schemas.usage import PromptTokensDetails, Usage
from app.tenancy import current_tenant

#: Event names of the pipeline's own (besides ``progress``, ``token``, ``done``, ``error``).
PHASE, DRAFT, SUGGESTION, SCORE = "phase", "draft", "suggestion", "score"

#: Priority order: a suggestion is applied when its rank reaches the request's min_priority.
_RANK = {Priority.low: 1, Priority.medium: 2, Priority.high: 3}

#: The operation name of a pipeline run's record.
PIPELINE_OPERATION = "chapter-pipeline"

#: The operations the pipeline calls, by role.
OPERATIONS = {"draft": "generate-chapter", "review": "editor-review", "rate": "rater-feedback",
              "revise": "modify-chapter"}


@dataclass
class _Record:
    """What a run has produced so far."""

    chapter_number: int = 0
    title: str | None = None
    model: str = ""
    report: AssemblyReport | None = None
    sampling: SamplingRecord | None = None
    model_record: ModelRecord | None = None
    drafts: list[PipelineDraft] = field(default_factory=list)
    calls: list[PipelineCall] = field(default_factory=list)

    def call(self, round_: int, phase: str, result: AgentResult) -> None:
        completion = result.completion
        self.calls.append(PipelineCall(
            round=round_, phase=phase,  # type: ignore[arg-type]
            generation_id=result.generation.generation_id if result.generation else None,
            agent=result.spec.agent, operation=result.spec.operation,
            usage=Usage.of(completion), timings=asdict(completion.timings),  # type: ignore[arg-type]
            attempts=result.attempts, quality=quality(result)))  # type: ignore[arg-type]

    def body(self, stopped_because: str, error: WriterAssistantError | None,
             generation_id: str | None, seed: int | None) -> dict[str, Any]:
        best = _best(self.drafts)
        for draft in self.drafts:
            draft.best = draft is best
        assert self.report is not None  # a record exists once a draft was written
        return ChapterPipelineResponse(
            generation_id=generation_id, seed=seed, model=self.model,
            chapter_number=self.chapter_number, title=self.title,
            drafts=self.drafts, best_round=best.round, chapter_text=best.text,
            stopped_because=stopped_because,  # type: ignore[arg-type]
            error=None if error is None else PipelineError(
                code=error.code, message=error.message, param=error.param,
                details=dict(error.details)),
            calls=self.calls, usage=_total(c.usage for c in self.calls),
            usage_by_agent={agent: _total(c.usage for c in self.calls if c.agent == agent)
                            for agent in dict.fromkeys(c.agent for c in self.calls)},
            context_metadata=self.report,
        ).model_dump(mode="json")


def _best(drafts: list[PipelineDraft]) -> PipelineDraft:
    """The scored draft with the highest mean (the later on a tie), else the latest."""
    scored = [d for d in drafts if d.mean_score is not None]
    if not scored:
        return drafts[-1]
    return max(reversed(scored), key=lambda d: d.mean_score or 0.0)


def _total(usages: Any) -> Usage:
    """The sum of ``usages`` (tokens)."""
    prompt = completion = cached = 0
    for usage in usages:
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
        cached += usage.prompt_tokens_details.cached_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def revision_request(suggestions: list[PipelineSuggestion]) -> str:
    """The author's request to the writer for a revision: the selected suggestions, numbered."""
    lines = ["Apply these suggestions from the editor and the readers:"]
    for number, item in enumerate(suggestions, 1):
        issue = f" (issue: {item.issue})" if item.issue else ""
        lines.append(f"{number}. {item.suggestion}{issue}")
    return "\n".join(lines)


class ChapterPipeline:
    """Runs :class:`~app.schemas.pipeline.ChapterPipelineRequest` through the writer, editor
    and raters of ``registry`` with ``runner``."""

    def __init__(self, runner: AgentRunner, registry: Mapping[str, AgentSpec]) -> None:
        self.runner = runner
        self.specs = {phase: registry[operation] for phase, operation in OPERATIONS.items()}

    async def stream(self, request: ChapterPipelineRequest, *,
                     replay_of: str | None = None) -> Events:
        """The run's events (see the module). The first draft is validated and assembled, and
        its place in the queue taken, before this returns, so bad input and a full queue are
        plain error answers; closing the events stops the call in progress within a token.

        With the runner's recorder, the run is recorded (``generation_id`` in ``done``; its
        calls are records of their own): a seed is drawn when the request has none, the
        writer's calls use it and the editor's and raters' seeds are derived from it
        (:func:`call_seed`), so the run can be replayed (``replay_of``: the record it
        replays).

        Raises:
            UnknownReference, InvalidRequest, ContextLengthExceeded, QueueFull: as
                :meth:`AgentRunner.stream` raises them for the first draft.
        """
        recorder = self.runner.recorder
        seeded = request.seed is not None
        if recorder is not None and request.seed is None:  # drawn, so a replay repeats it
            request = request.model_copy(update={"seed": draw_seed()})
        # the cache may answer the calls only when the caller chose the seed
        request = request.model_copy(update={"cache": request.cache and seeded})
        first = await self.runner.stream(self.specs["draft"], _draft_request(request),
                                         replay_of=None)
        generation_id = new_generation_id() if recorder is not None else None
        return self._events(request, first, generation_id, replay_of)

    async def run(self, request: ChapterPipelineRequest, *,
                  replay_of: str | None = None) -> ChapterPipelineResponse:
        """The run's full record (the ``done`` event's payload).

        Raises what :meth:`stream` raises, and what the first draft's generation raises
        (a later failure is in the record's ``error``).
        """
        events = await self.stream(request, replay_of=replay_of)
        try:
            async for name, data in events:
                if name == DONE:
                    return ChapterPipelineResponse.model_validate(data)
        finally:
            await events.aclose()
        raise GenerationFailed("the pipeline ended without its record")

    async def _events(self, request: ChapterPipelineRequest,
                      first: AsyncGenerator[Any, None], generation_id: str | None,
                      replay_of: str | None) -> Events:
        record = _Record()
        items: AsyncGenerator[Any, None] | None = first
        round_, phase = 1, "draft"
        stopped, failure = "max_rounds", None
        try:
            while items is not None:
                yield PHASE, {"round": round_, "phase": phase}
                result: AgentResult | None = None
                async for item in items:
                    if isinstance(item, TokenDelta):
                        yield TOKEN, {"round": round_, "text": item.text}
                    elif isinstance(item, Progress):
                        yield PROGRESS, {"round": round_, "phase": phase, **item.data}
                    elif isinstance(item, Meta) and record.report is None:
                        record.report = item.report
                    elif isinstance(item, AgentResult):
                        result = item
                items = None
                if result is None:
                    raise GenerationFailed("the writer's stream ended without a draft")
                if not record.drafts:
                    record.chapter_number = int(result.task.summary.get("chapter_number") or 0)
                    record.title = request.title
                    record.model = result.report.model
                    record.sampling = result.generation.sampling if result.generation else None
                    record.model_record = (result.generation.model if result.generation
                                           else None)
                record.call(round_, phase, result)
                draft = PipelineDraft(round=round_, text=result.text.strip(),
                                      quality=quality(result))  # type: ignore[arg-type]
                record.drafts.append(draft)
                yield DRAFT, {"round": round_, "text": draft.text,
                              "quality": draft.quality.model_dump()}
                story = _with_draft(request, record, draft)
                async for event in self._critique(request, story, record, draft):
                    yield event
                if (request.min_score is not None and draft.mean_score is not None
                        and draft.mean_score >= request.min_score):
                    stopped = "min_score"
                    break
                if round_ >= request.max_rounds:
                    break
                selected = [s for s in draft.suggestions
                            if _RANK[s.priority] >= _RANK[request.min_priority]]
                for suggestion in selected:
                    suggestion.applied = True
                round_, phase = round_ + 1, "revise"
                items = await self.runner.stream(
                    self.specs["revise"],
                    _revise_request(request, story, record.chapter_number, selected))
        except WriterAssistantError as error:
            if not record.drafts:
                raise
            stopped, failure = "error", error
        finally:
            if items is not None:
                await items.aclose()
        body = record.body(stopped, failure, generation_id, request.seed)
        if generation_id is not None and record.sampling is not None:
            await self._keep(request, generation_id, record.sampling, body, replay_of,
                             record.model_record)
        yield DONE, body

    async def _keep(self, request: ChapterPipelineRequest, generation_id: str,
                    sampling: SamplingRecord, body: dict[str, Any],
                    replay_of: str | None, model: ModelRecord | None = None) -> None:
        """Record the run (its calls were recorded as they finished) with the first draft's
        ``sampling`` and ``model`` (the base, or with the adapter it ran with); a store that
        fails is logged and counted, never raised."""
        recorder = self.runner.recorder
        assert recorder is not None
        tenant = current_tenant.get()
        response = ChapterPipelineResponse.model_validate(body)
        await recorder.keep(GenerationRecord(
            id=generation_id, kind="pipeline", tenant=tenant, created_at=now_utc(),
            operation=PIPELINE_OPERATION, story_id=story_id_of(request),
            request_sha256=request_sha256(request),
            request=request_json(request) if request.store_request else None,
            model=model or recorder.model_record(),
            sampling=sampling,
            text=response.chapter_text, usage=response.usage,
            timings=TimingsOut(queue_ms=0.0, time_to_first_token_ms=0.0,
                               total_ms=sum(c.timings.total_ms for c in response.calls),
                               decode_tokens_per_s=0.0),
            attempts=len(response.calls), context_metadata=response.context_metadata,
            response=body, children=[c.generation_id for c in response.calls
                                     if c.generation_id], replay_of=replay_of))

    async def _critique(self, request: ChapterPipelineRequest, story: StructuredContext,
                        record: _Record, draft: PipelineDraft) -> Events:
        """The editor's suggestions and every rater's score on ``draft``, the chapter
        ``record.chapter_number`` of ``story`` (filled in place)."""
        yield PHASE, {"round": draft.round, "phase": "review"}
        review = await self._call(self.specs["review"], EditorReviewRequest(
            structured_context=story,
            context_processing_config=request.context_processing_config,
            chapter_number=record.chapter_number, cache=request.cache, model=request.model,
            seed=call_seed(request.seed, draft.round, 1)))
        record.call(draft.round, "review", review)
        for item in getattr(review.output, "suggestions", []):
            suggestion = PipelineSuggestion(source="editor", issue=item.issue,
                                            suggestion=item.suggestion,
                                            priority=item.priority, applied=False)
            draft.suggestions.append(suggestion)
            yield SUGGESTION, {"round": draft.round, **suggestion.model_dump(mode="json")}
        for slot, rater in enumerate(request.raters, start=2):
            yield PHASE, {"round": draft.round, "phase": "rate", "rater": rater.name}
            rated = await self._call(self.specs["rate"], RaterFeedbackRequest(
                structured_context=story,
                context_processing_config=request.context_processing_config,
                chapter_number=record.chapter_number, rater_name=rater.name,
                criteria=rater.criteria, cache=request.cache, model=request.model,
                seed=call_seed(request.seed, draft.round, slot)))
            record.call(draft.round, "rate", rated)
            output: Any = rated.output
            score = PipelineScore(rater=rater.name, criteria=list(rater.criteria),
                                  score=int(output.score), opinion=output.opinion)
            draft.scores.append(score)
            draft.mean_score = round(sum(s.score for s in draft.scores) / len(draft.scores), 2)
            yield SCORE, {"round": draft.round, **score.model_dump()}
            for line in output.suggestions:
                suggestion = PipelineSuggestion(source=f"rater:{rater.name}", suggestion=line,
                                                priority=Priority.medium, applied=False)
                draft.suggestions.append(suggestion)
                yield SUGGESTION, {"round": draft.round, **suggestion.model_dump(mode="json")}

    async def _call(self, spec: AgentSpec, request: Any) -> AgentResult:
        """One JSON agent call, through the runner's stream so that closing the pipeline
        stops it within a token."""
        items = await self.runner.stream(spec, request)
        try:
            async for item in items:
                if isinstance(item, AgentResult):
                    return item
        finally:
            await items.aclose()
        raise GenerationFailed(f"the {spec.agent}'s stream ended without an answer")


def _draft_request(request: ChapterPipelineRequest) -> GenerateChapterRequest:
    """The writer's generate-chapter request: the pipeline request without its own fields
    (the validated values passed on as they are)."""
    return GenerateChapterRequest(**{name: getattr(request, name)
                                     for name in GenerateChapterRequest.model_fields})


def _with_draft(request: ChapterPipelineRequest, record: _Record,
                draft: PipelineDraft) -> StructuredContext:
    """The request's story with ``draft`` as its chapter ``record.chapter_number`` (replacing
    a chapter of that number, else in number order).

    The editor, raters and reviser refer to the draft where it stands in the shared story
    block (quoted in their task only when it does not fit whole), so after the first of them
    processed it, the others reuse its KV state instead of processing it again.

    Raises:
        GenerationFailed: the draft is empty.
    """
    if not draft.text:
        raise GenerationFailed("the writer's draft is empty")
    context = request.structured_context
    chapter = Chapter(number=record.chapter_number, title=record.title or "",
                      content=draft.text)
    chapters = sorted([c for c in context.chapters if c.number != chapter.number] + [chapter],
                      key=lambda c: c.number)
    return context.model_copy(update={"chapters": chapters})


def _revise_request(request: ChapterPipelineRequest, story: StructuredContext, number: int,
                    selected: list[PipelineSuggestion]) -> ModifyChapterRequest:
    """The writer's modify-chapter request revising chapter ``number`` of ``story`` (the
    draft) with ``selected``."""
    return ModifyChapterRequest(
        structured_context=story,
        context_processing_config=request.context_processing_config,
        temperature=request.temperature, max_tokens=request.max_tokens, seed=request.seed,
        cache=request.cache, model=request.model, target_words=request.target_words,
        chapter_number=number,
        user_request=revision_request(selected) if selected else
        "Polish the chapter: tighten the prose and keep its events.")


def call_seed(seed: int | None, round_: int, slot: int) -> int | None:
    """The seed of the editor's (``slot`` 1) or a rater's (``slot`` 2, 3, ...) call on the
    draft of ``round_``, derived from the run's ``seed`` (``None``: none)."""
    if seed is None:
        return None
    return (seed + 1009 * round_ + slot) % (2**31 - 1)
