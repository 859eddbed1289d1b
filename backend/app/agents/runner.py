"""The one generic agent runner: assemble the context, take a turn at the model, distill what
overflows, generate, check JSON output.

Every model call of the service goes through :meth:`AgentRunner._generation`: agents and their
repair attempts, the summaries that distill a context, RAG answers and warming a story. So
every one of them is observed the same way (metrics and a ``generation`` log event), runs
inside a turn of the :class:`~app.llm.scheduler.Scheduler`, and falls under its request's one
deadline (``GENERATION_TIMEOUT_S``, covering assembly, distillation and generation once the
turn has come). Routes never touch the queue; they call the runner.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.agents.archivist import source_elements
from app.agents.quality import MIN_PROSE_WORDS, Rule, check_output, check_prose, repair_prose
from app.agents.registry import TEAM_PREAMBLE, default_completion_reserve
from app.agents.sampling import SamplingPlan, plan_sampling, window_tokens
from app.agents.spec import AgentResult, AgentSpec, TaskInput
from app.config import (
    ContextSettings,
    DistillationSettings,
    EndpointSettings,
    SamplingSettings,
    Settings,
)
from app.context.assembly import AgentTask, AssembledPrompt, assemble
from app.context.distill import SummaryJob, SummaryLookup
from app.context.elements import Audience, ContextElement, flatten
from app.context.report import AssemblyReport, DistillationStats
from app.context.summaries import Distiller, DistillStats, SummaryCache
from app.errors import (
    AgentOutputInvalid,
    ArchiveUnavailable,
    GenerationFailed,
    GenerationTimeout,
    OutputTruncated,
    ServiceDraining,
    UnknownModel,
    WriterAssistantError,
)
from app.finetune.registry import AdapterRegistry
from app.generations.recorder import Recorder, Stamp, now_utc
from app.generations.records import (
    GenerationRecord,
    SamplingRecord,
    request_json,
    request_sha256,
    sha256_text,
)
from app.llm.protocol import (
    BASE_MODEL,
    ChatMessage,
    Completion,
    LoraAdapter,
    SamplingParams,
    SharedPrefix,
    StreamItem,
    TextGenerator,
    Timings,
    TokenDelta,
    serves_adapters,
)
from app.llm.scheduler import JobClass, Scheduler, Turn
from app.observability.logging import log_error_answer, log_generation
from app.observability.metrics import Metrics
from app.schemas.archive import Passage
from app.schemas.requests import AgentRequest
from app.schemas.responses import Quality, TimingsOut
from app.schemas.usage import Usage
from app.tenancy import current_tenant

T = TypeVar("T")

#: Extra context elements for a story request (e.g. archive passages); see ``AgentRunner``.
ExtraElements = Callable[[AgentRequest], Awaitable[list[ContextElement]]]
#: Archive passages for a query and a request's ``top_k`` and filters (raises
#: ``ArchiveUnavailable`` when there is no archive); see ``AgentRunner``.
Retrieve = Callable[[str, Any], Awaitable[list[Passage]]]

#: Receives one dict per distillation step (streamed as ``progress`` events).
ProgressCallback = Callable[[dict[str, object]], Awaitable[None]]

#: Assembly passes per request: one per level of summaries (see app.context.overflow), + 1.
_MAX_ASSEMBLY_PASSES = 8

#: Characters of a validation error quoted back to the model in the repair attempt.
_REPAIR_ERROR_CHARS = 300

#: (agent, operation) labels of the model calls that are not an agent's own.
SUMMARY_LABEL = ("distiller", "summary")


@dataclass(frozen=True)
class RunnerSettings:
    """What the runner reads of the settings: sampling defaults, the context budget,
    distillation, the deadline of a request's work (seconds), whether prompts are logged, and
    the operations' own defaults (``ENDPOINT_*``)."""

    sampling: SamplingSettings
    context: ContextSettings
    distillation: DistillationSettings
    generation_timeout_s: float
    log_prompts: bool
    endpoints: EndpointSettings
    quality_max_retries: int = 0

    @classmethod
    def of(cls, settings: Settings) -> RunnerSettings:
        """The runner's part of the service's settings."""
        return cls(sampling=settings.model.sampling, context=settings.context,
                   distillation=settings.distillation,
                   generation_timeout_s=settings.limits.generation_timeout_s,
                   log_prompts=settings.observability.log_prompts,
                   endpoints=settings.endpoints,
                   quality_max_retries=settings.quality.max_retries)


@dataclass(frozen=True)
class Prepared:
    """A request ready to generate: the task, the assembled prompt and the sampling."""

    task: TaskInput
    prompt: AssembledPrompt
    params: SamplingParams


@dataclass(frozen=True)
class Progress:
    """A distillation step, streamed before the first token so a client is never silent long."""

    data: dict[str, object]


@dataclass(frozen=True)
class Meta:
    """The assembly report and the fields the response echoes (``spec.echo``; first after
    any progress); ``messages`` is the prompt about to be generated from; ``generation`` the
    answer's record stamp (``None`` with records off)."""

    report: AssemblyReport
    echo: dict[str, Any]
    messages: tuple[ChatMessage, ...] = ()
    generation: Stamp | None = None


@dataclass(frozen=True)
class _Begun:
    """A request planned, assembled and stamped: ready for its turn, or answered from the
    response cache (``hit``)."""

    plan: _Plan
    lookup: _CountingLookup | None
    prompt: AssembledPrompt
    stamp: Stamp | None
    hit: AgentResult | None = None


@dataclass(frozen=True)
class _Plan:
    """A request turned into what assembly needs."""

    task: TaskInput
    params: SamplingParams
    elements: list[ContextElement]
    agent_task: AgentTask
    max_context_tokens: int | None
    max_tokens_note: str | None = None

    def with_note(self, note: str) -> _Plan:
        """The plan with ``note`` appended to the task (after the shared block, so the
        repair attempt reuses the first attempt's KV state)."""
        task = self.agent_task
        return replace(self, agent_task=replace(
            task, task=f"{task.task}\n\n{note}",
            inline_task=f"{task.inline_task}\n\n{note}" if task.inline_task else ""))


class _TokenGaps:
    """Observes the seconds between consecutive token deltas of one generation (the first
    delta's wait is the time to first token, measured by the generator)."""

    def __init__(self, metrics: Metrics, agent: str, operation: str) -> None:
        self._metrics = metrics
        self._labels = (agent, operation)
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._metrics.observe_token_gap(*self._labels, now - self._last)
        self._last = now


class _CountingLookup:
    """``tenant``'s part of the summary cache as assembly's lookup, counting the summaries it
    finds."""

    def __init__(self, cache: SummaryCache, tenant: str) -> None:
        self.cache = cache
        self.tenant = tenant
        self.hits = 0

    def get(self, job: SummaryJob) -> str | None:
        text = self.cache.get(job, tenant=self.tenant)
        self.hits += text is not None
        return text


class AgentRunner:
    """Runs agent operations on one text generator, in turns of one scheduler.

    ``extra_elements``, when given, supplies more context elements per request (the archive's
    retrieved passages); they go after the story's shared block. ``summary_cache``, when
    given (and ``DISTILLATION_ENABLED``), lets the runner summarize what overflows.
    ``adapters``, when given (and the generator serves adapters), is the registry a
    request's ``model`` names a LoRA adapter from; without it only ``base`` is served.
    ``recorder``, when given, records every agent call (``generation_id``, the seed drawn when
    the request gave none) and answers a repeated seeded request from the response cache
    without a turn at the model (:mod:`app.generations.recorder`). ``metrics``
    receives the figures of every request and generation, and every completed generation is
    logged as a ``generation`` event. Assembly and token counting run on the runner's own
    threads (never the event loop, never the default pool that archive uploads may fill).
    """

    def __init__(
        self,
        settings: RunnerSettings,
        generator: TextGenerator,
        scheduler: Scheduler,
        metrics: Metrics,
        *,
        extra_elements: ExtraElements | None = None,
        retrieve: Retrieve | None = None,
        summary_cache: SummaryCache | None = None,
        recorder: Recorder | None = None,
        adapters: AdapterRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.adapters = adapters if serves_adapters(generator) else None
        self.generator = generator
        self.scheduler = scheduler
        self.metrics = metrics
        self.extra_elements = extra_elements
        self.retrieve = retrieve
        self.distiller = (Distiller(generator, summary_cache, settings.distillation,
                                    settings.sampling, self._summarize)
                          if summary_cache is not None else None)
        self.completion_reserve = default_completion_reserve(
            settings.context, settings.sampling, settings.endpoints, generator.n_ctx)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="context")

    def close(self) -> None:
        """Stop the runner's threads (after the requests are done)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking ``work(*args)`` (tokenizing, assembling) on the runner's threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(work, *args))

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with the served model's tokenizer (no special tokens)."""
        count = self.generator.count_tokens
        return await self.off_loop(lambda: [count(text) for text in texts])

    # --- the one generation path ----------------------------------------------------------
    async def _generation(
        self, label: tuple[str, str], messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix, *, streamed: bool, attempt: int = 1, queue_s: float = 0.0,
    ) -> AsyncGenerator[StreamItem, None]:
        """The generator's stream for one model call, observed: gaps between token deltas,
        and on completion the metrics and the ``generation`` log event (the prompt and text
        only with ``LOG_PROMPTS``). Call it inside a turn."""
        gaps = _TokenGaps(self.metrics, *label)
        stream = self.generator.stream(messages, params, prefix)
        try:
            async for item in stream:
                if isinstance(item, TokenDelta):
                    gaps.tick()
                elif isinstance(item, Completion):
                    item.timings.queue_ms = queue_s * 1000
                    self.metrics.observe_completion(*label, item)
                    prompt = (self.generator.render_prompt(messages)
                              if self.settings.log_prompts else None)
                    log_generation(operation=label[1], agent=label[0], completion=item,
                                   streamed=streamed, attempt=attempt, prompt=prompt)
                yield item
        finally:
            await stream.aclose()

    async def _complete(self, label: tuple[str, str], messages: Sequence[ChatMessage],
                        params: SamplingParams, prefix: SharedPrefix, *, attempt: int = 1,
                        queue_s: float = 0.0) -> Completion:
        """:meth:`_generation` to its end.

        Raises:
            GenerationFailed: the model failed, or its stream ended without a completion.
        """
        stream = self._generation(label, messages, params, prefix, streamed=False,
                                  attempt=attempt, queue_s=queue_s)
        return await _final(stream, Completion, "the model stream ended without a completion")

    async def _summarize(self, messages: Sequence[ChatMessage],
                         params: SamplingParams) -> Completion:
        """The distiller's model call (inside the request's turn)."""
        return await self._complete(SUMMARY_LABEL, messages, params, _owner_only())

    # --- turns and the deadline -----------------------------------------------------------
    def _deadline(self, started: float, turn: Turn) -> float:
        """The request's deadline on the loop's clock: ``GENERATION_TIMEOUT_S`` of work from
        ``started`` (loop time), not counting its wait in the queue."""
        return started + turn.queue_s + self.settings.generation_timeout_s

    def _timeout(self) -> GenerationTimeout:
        return GenerationTimeout(
            f"The request's work (assembly, distillation and generation) ran past the "
            f"{self.settings.generation_timeout_s:g}-second cap and was stopped; lower "
            "max_tokens or shorten the context.",
        )

    async def _in_turn(self, label: tuple[str, str], work: Callable[[Turn], Awaitable[T]],
                       started: float, job_class: JobClass = JobClass.interactive) -> T:
        """Take a turn at the model, then run ``work(turn)`` under the request's deadline.

        Raises:
            QueueFull (at once), QueueTimeout, ServiceDraining: no turn.
            GenerationTimeout: the deadline passed; the work was stopped.
        """
        turn = self.scheduler.reserve(job_class)
        try:
            async with turn:
                self.metrics.observe_queue(*label, turn.queue_s)
                try:
                    async with asyncio.timeout_at(self._deadline(started, turn)):
                        return await work(turn)
                except TimeoutError:
                    raise self._timeout() from None
        finally:
            turn.cancel()

    # --- assembly -------------------------------------------------------------------------
    def sampling(self, spec: AgentSpec, request: Any) -> SamplingParams:
        """Sampling for ``request``: its overrides, else ``ENDPOINT_*``, else the agent's
        (scaled to the window), else the server's (see :mod:`app.agents.sampling`).

        Raises:
            InvalidRequest: ``max_tokens`` is above the operation's limit.
        """
        return self._sampling_plan(spec, request).params

    def _sampling_plan(self, spec: AgentSpec, request: Any) -> SamplingPlan:
        """:meth:`sampling` with the note on a lowered ``max_tokens`` default."""
        config = getattr(request, "context_processing_config", None)
        window = window_tokens(self.settings.context, self.generator.n_ctx,
                               config.max_context_tokens if config else None)
        return plan_sampling(spec, request, self.settings.sampling,
                             self.settings.endpoints.of(spec.operation), window)

    def model_for(self, name: str) -> LoraAdapter | None:
        """The adapter a request's ``model`` names (``None``: ``base``), checked against the
        served base model. Blocking (reads the registry's entry): call it off the loop.

        Raises:
            UnknownModel: neither ``base`` nor an adapter this server serves.
            AdapterMismatch: the adapter was made for another base model.
        """
        if self.adapters is None:
            if name == BASE_MODEL:
                return None
            raise UnknownModel(
                f"No model {name!r} here: this server serves only {BASE_MODEL!r} (adapters "
                "are served by the in-process model, LLM_BACKEND=llama_cpp).",
                param="model", available=[BASE_MODEL])
        return self.adapters.resolve(name, getattr(self.generator, "sha256", None) or None)

    def model_label(self, adapter: LoraAdapter | None) -> str:
        """What answers name as their ``model``: the base model's name, and ``+`` the
        adapter's name when one is applied (``SmolLM2-135M-Instruct.Q4_1+holmes``)."""
        name = self.generator.model_name
        return f"{name}+{adapter.name}" if adapter is not None else name

    async def _plan(self, spec: AgentSpec, request: Any) -> _Plan:
        """The request's task, sampling and context elements: its story's (with the
        archive passages retrieved for it), or for an archive agent the passages retrieved
        for its question.

        Raises:
            UnknownReference, InvalidRequest: the request cannot be served as given.
            UnknownModel, AdapterMismatch: its ``model`` cannot be served.
            ArchiveUnavailable, EmbeddingModelMismatch: an archive agent's retrieval failed.
        """
        task = spec.build_task(request)
        sampling = self._sampling_plan(spec, request)
        name = getattr(request, "model", BASE_MODEL)
        if name != BASE_MODEL:
            adapter = await self.off_loop(self.model_for, name)
            sampling = replace(sampling, params=replace(sampling.params, adapter=adapter))
        config = getattr(request, "context_processing_config", None)
        if spec.retrieval_query is not None:
            elements = source_elements(await self._retrieve(spec.retrieval_query(request),
                                                            request))
        else:
            # filtered for this agent, the request's phase and the character it speaks as
            audience = Audience.of(spec.agent, spec.operation, config,
                                   task.summary.get("character_name"))
            elements = flatten(request.structured_context, audience)
            if self.extra_elements is not None:
                extra = await self.extra_elements(request)
                elements += [replace(e, order=len(elements) + i) for i, e in enumerate(extra)]
        agent_task = AgentTask(
            agent=spec.agent, role=spec.role, task=task.text, history=task.history,
            reference=task.reference, inline_task=task.inline,
            preamble=spec.preamble or TEAM_PREAMBLE,
        )
        return _Plan(task, sampling.params, elements, agent_task,
                     config.max_context_tokens if config else None, sampling.max_tokens_note)

    async def _prepare(self, spec: AgentSpec, request: Any
                       ) -> tuple[_Plan, _CountingLookup | None, AssembledPrompt]:
        """Plan and assemble ``request`` once, before any turn (summaries the cache lacks are
        left for :meth:`_distill`). Raises what :meth:`_plan` and assembly raise."""
        plan = await self._plan(spec, request)
        lookup = self._lookup(spec)
        return plan, lookup, await self._assemble(plan, lookup)

    async def _retrieve(self, query: str, request: Any) -> list[Passage]:
        """Archive passages for an archive agent.

        Raises:
            ArchiveUnavailable: this runner has no archive.
        """
        if self.retrieve is None:
            raise ArchiveUnavailable("The archive is disabled on this server (ARCHIVE_ENABLED).")
        return await self.retrieve(query, request)

    async def _assemble(self, plan: _Plan, lookup: SummaryLookup | None) -> AssembledPrompt:
        """Assemble ``plan``'s prompt; its report carries the plan's ``max_tokens_note``."""
        generator = self.generator
        prompt = await self.off_loop(functools.partial(
            assemble,
            plan.elements,
            plan.agent_task,
            counter=generator,
            context=self.settings.context,
            distillation=self.settings.distillation,
            n_ctx=generator.n_ctx,
            model=self.model_label(plan.params.adapter),
            max_tokens=plan.params.max_tokens,
            completion_reserve=self.completion_reserve,
            max_context_tokens=plan.max_context_tokens,
            summaries=lookup,
        ))
        prompt.report.max_tokens_note = plan.max_tokens_note
        return prompt

    def _lookup(self, spec: AgentSpec) -> _CountingLookup | None:
        if (self.distiller is None or not self.settings.distillation.enabled
                or not spec.distills):
            return None
        # The request's tenant, read here on the event loop: assembly runs on the runner's
        # threads, which do not carry the request's context.
        return _CountingLookup(self.distiller.cache, current_tenant.get())

    async def _distill(
        self,
        plan: _Plan,
        prompt: AssembledPrompt,
        lookup: _CountingLookup | None,
        progress: ProgressCallback | None,
    ) -> AssembledPrompt:
        """Make the summaries assembly asked for and assemble again, until none is missing.
        Call it inside a turn (it uses the model).

        Raises:
            GenerationFailed: the model failed while summarizing, or the passes ran out.
        """
        if lookup is None or self.distiller is None:
            return prompt
        started = time.perf_counter()
        stats = DistillStats()
        for _ in range(_MAX_ASSEMBLY_PASSES):
            if not prompt.missing:
                break
            jobs = list({job.digest: job for job in prompt.missing}.values())
            for step, job in enumerate(jobs, start=1):
                if progress is not None:
                    await progress({"stage": "distilling", "summary": job.id, "label": job.label,
                                    "layer": job.layer.value, "level": job.level,
                                    "step": step, "steps": len(jobs)})
                await self.distiller.make(job, stats, tenant=lookup.tenant)
            lookup.hits = 0
            prompt = await self._assemble(plan, lookup)
        if prompt.missing:
            raise GenerationFailed("distilling the context did not converge; retry the request")
        prompt.report.distillation = DistillationStats(
            llm_calls=stats.llm_calls,
            cache_hits=max(0, lookup.hits - stats.made),
            seconds=round(time.perf_counter() - started, 3),
        )
        return prompt

    async def preview(self, spec: AgentSpec, request: Any,
                      progress: ProgressCallback | None = None) -> Prepared:
        """Build the task, assemble the context and choose the sampling without generating
        the answer. Distilling may need the model, so it takes a turn; ``progress`` receives
        a dict per summary made.

        Raises:
            UnknownReference, InvalidRequest, ContextLengthExceeded: the request cannot be
                served as given.
            QueueFull, QueueTimeout, GenerationTimeout: no turn, or it took too long.
            GenerationFailed: the model failed while distilling.
        """
        started = asyncio.get_running_loop().time()
        plan, lookup, prompt = await self._prepare(spec, request)
        if prompt.missing:
            prompt = await self._in_turn(
                (spec.agent, "context-preview"),
                lambda _turn: self._distill(plan, prompt, lookup, progress), started)
        else:  # every summary was cached: no model work, no turn
            prompt = await self._distill(plan, prompt, lookup, progress)
        return Prepared(plan.task, prompt, plan.params)

    async def warm(self, spec: AgentSpec, request: Any) -> tuple[Prepared, Completion]:
        """Get a story ready for ``spec`` ahead of time, as background work: distill its
        context and process its prompt once (one completion token), so the model's prefix
        cache holds the story's shared block when the author asks.

        Raises what :meth:`preview` raises.
        """
        started = asyncio.get_running_loop().time()
        plan, lookup, prompt = await self._prepare(spec, request)
        label = (spec.agent, "context-warm")
        params = replace(plan.params, max_tokens=1, json_schema=None)

        async def work(turn: Turn) -> tuple[AssembledPrompt, Completion]:
            done = await self._distill(plan, prompt, lookup, None)
            completion = await self._complete(label, done.messages, params, _shared(done),
                                              queue_s=turn.queue_s)
            return done, completion

        done, completion = await self._in_turn(label, work, started, JobClass.background)
        return Prepared(plan.task, done, plan.params), completion

    # --- records and the response cache ---------------------------------------------------
    async def _begin(self, spec: AgentSpec, request: Any, sampling: SamplingRecord | None,
                     started: float) -> _Begun:
        """Plan and assemble ``request`` (:meth:`_prepare`; with ``sampling``, its sampling
        replaced by the recorded one), then stamp it: a seed drawn when it has none, a
        generation id, and, when the response cache may answer it and its prompt needs no
        distilling, the tenant's cached answer for the same prompt and sampling (``hit``).

        Raises what :meth:`_prepare` raises.
        """
        plan, lookup, prompt = await self._prepare(spec, request)
        if sampling is not None:
            plan = replace(plan, params=replace(
                plan.params, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, top_k=sampling.top_k,
                repeat_penalty=sampling.repeat_penalty, seed=sampling.seed,
                stop=tuple(sampling.stop)))
        if self.recorder is None:
            return _Begun(plan, lookup, prompt, None)
        params, stamp = self.recorder.stamp(
            plan.params, caller_seeded=getattr(request, "seed", None) is not None,
            use_cache=sampling is None and bool(getattr(request, "cache", True)))
        plan = replace(plan, params=params)
        if stamp.cache != "miss" or prompt.missing:  # no key until the summaries exist
            return _Begun(plan, lookup, prompt, stamp)
        key = self._cache_key(spec, prompt.messages, params)
        stamp = replace(stamp, cache_key=key)
        record = await self.recorder.cached(current_tenant.get(), key)
        if record is None or record.context_metadata is None:
            return _Begun(plan, lookup, prompt, stamp)
        hit = _cached_result(spec, request, plan, record, time.perf_counter() - started)
        return _Begun(plan, lookup, prompt, stamp, hit)

    def _cache_key(self, spec: AgentSpec, messages: Sequence[ChatMessage],
                   params: SamplingParams) -> str:
        """The response cache's key of a prompt and its sampling (see
        :meth:`app.generations.recorder.Recorder.key`)."""
        assert self.recorder is not None
        return self.recorder.key(current_tenant.get(), spec.operation,
                                 self.generator.render_prompt(messages), params,
                                 self.settings.quality_max_retries)

    async def _keep(self, request: Any, params: SamplingParams, result: AgentResult,
                    replay_of: str | None) -> AgentResult:
        """Record ``result`` (generated with ``params``, first attempt) and, when the cache
        may answer its request, cache it under its prompt's key. Returns ``result``; a store
        that fails is logged and counted, never raised (the answer is not lost)."""
        stamp = result.generation
        if self.recorder is None or stamp is None:
            return result
        key = None
        if stamp.cache == "miss" and result.completion.finish_reason != "cancelled":
            key = stamp.cache_key or self._cache_key(result.spec, result.messages, params)
        completion = result.completion
        record = GenerationRecord(
            id=stamp.generation_id, tenant=current_tenant.get(), created_at=now_utc(),
            operation=result.spec.operation, story_id=story_id_of(request),
            request_sha256=request_sha256(request),
            request=request_json(request) if getattr(request, "store_request", False)
            else None,
            model=stamp.model or self.recorder.model_record(params.adapter),
            sampling=stamp.sampling or SamplingRecord.of(params),
            prompt_sha256=sha256_text(self.generator.render_prompt(result.messages))
            if result.messages else None,
            text=result.text, output=(result.output.model_dump(mode="json")
                                      if result.output is not None else None),
            finish_reason=completion.finish_reason, usage=Usage.of(completion),
            timings=TimingsOut.model_validate(asdict(completion.timings)),
            attempts=result.attempts,
            quality=Quality(useful=not result.problems, problems=list(result.problems),
                            repairs=list(result.repairs)),
            context_metadata=result.report, replay_of=replay_of, cacheable=key is not None)
        await self.recorder.keep(record, key)
        return result

    # --- agents ---------------------------------------------------------------------------
    async def run(self, spec: AgentSpec, request: Any, *,
                  sampling: SamplingRecord | None = None,
                  replay_of: str | None = None) -> AgentResult:
        """Assemble, take a turn at the model, then distill and generate until an answer is
        accepted (see :meth:`_answer`); with a recorder, the answer is recorded, or found in
        the response cache without a turn (see :meth:`_begin`).

        ``sampling`` (a replay): generate with exactly this recorded sampling instead of the
        request's (the cache is skipped); ``replay_of``: the record it replays.

        Raises:
            UnknownReference, InvalidRequest, ContextLengthExceeded: bad input (before any
                turn is taken).
            QueueFull (at once), QueueTimeout, ServiceDraining: no turn.
            GenerationTimeout, GenerationFailed, AgentOutputInvalid, OutputTruncated.
        """
        started = time.perf_counter()
        loop_started = asyncio.get_running_loop().time()
        begun = await self._begin(spec, request, sampling, started)
        if begun.hit is not None:
            self.metrics.observe_request(spec.agent, spec.operation,
                                         time.perf_counter() - started)
            return begun.hit
        plan, lookup, prompt = begun.plan, begun.lookup, begun.prompt

        async def work(turn: Turn) -> AgentResult:
            items = self._answer(spec, request, plan, prompt, lookup, turn, streamed=False,
                                 stamp=begun.stamp)
            return await _final(items, AgentResult, "the answer ended without a result")

        result = await self._in_turn((spec.agent, spec.operation), work, loop_started)
        result = await self._keep(request, plan.params, result, replay_of)
        self.metrics.observe_request(spec.agent, spec.operation, time.perf_counter() - started)
        return result

    async def _answer(
        self, spec: AgentSpec, request: Any, plan: _Plan, prompt: AssembledPrompt,
        lookup: _CountingLookup | None, turn: Turn, *, streamed: bool,
        deadline: float | None = None, stamp: Stamp | None = None,
    ) -> AsyncGenerator[Progress | Meta | TokenDelta | AgentResult, None]:
        """Distill, then generate attempts until one is accepted; yield :class:`Progress`
        (distillation steps when ``streamed``, and one before each further attempt),
        :class:`Meta`, the token deltas of every attempt when ``streamed``, and last the
        :class:`AgentResult`. Call it inside a turn.

        Attempts: JSON agents decode under a grammar from their output model; output that does
        not parse or validate, or that ran out of ``max_tokens``, gets one repair attempt (a
        note after the shared block, so it reuses the KV state). Then every answer passes the
        content check (``app.agents.quality``); one that fails is tried again with another
        seed, up to ``QUALITY_MAX_RETRIES`` times, and the best attempt is returned with the
        problems it still has (``AgentResult.problems``).

        Raises:
            AgentOutputInvalid: the repair attempt failed too.
            OutputTruncated: both attempts ran out of the ``max_tokens`` the caller set.
            GenerationTimeout: ``deadline`` (loop time; streamed only) passed while
                distilling.
            plus what distilling and the generator raise.
        """
        label = (spec.agent, spec.operation)
        if streamed and deadline is not None:
            distilled: AssembledPrompt | None = None
            async for step in self._distill_with_progress(plan, prompt, lookup, deadline):
                if isinstance(step, Progress):
                    yield step
                else:
                    distilled = step
            assert distilled is not None
            prompt = distilled
        else:
            prompt = await self._distill(plan, prompt, lookup, None)
        first_prompt = tuple(prompt.messages)
        yield Meta(prompt.report, spec.echo(plan.task, prompt.report), first_prompt, stamp)
        output_model = spec.output_model_for(request)
        stop = spec.stop_for(plan.task)
        params = replace(plan.params, stop=stop) if stop else plan.params
        retries = self.settings.quality_max_retries
        repaired = False
        best: AgentResult | None = None
        attempt = 0
        while True:
            attempt += 1
            completion: Completion | None = None
            stream = self._generation(label, prompt.messages, params, _shared(prompt),
                                      streamed=streamed, attempt=attempt, queue_s=turn.queue_s)
            try:
                async for item in stream:
                    if isinstance(item, TokenDelta):
                        if streamed:
                            if self.scheduler.streams_stopped:
                                raise ServiceDraining(
                                    "The server is shutting down; this stream was ended "
                                    "before it finished. Retry after the restart.")
                            yield item
                    elif isinstance(item, Completion):
                        completion = item
            finally:
                await stream.aclose()
            if completion is None:
                raise GenerationFailed("the model stream ended without a completion")
            output: BaseModel | None = None
            if output_model is not None:
                try:
                    output = _parse(output_model, completion)
                except ValueError as error:
                    problem = str(error)[:_REPAIR_ERROR_CHARS]
                    if repaired:
                        if best is not None:  # an earlier attempt parsed: keep it
                            break
                        raise _invalid(spec, request, completion, problem) from error
                    repaired = True
                    plan = plan.with_note(
                        f"Your previous answer was rejected: {problem}. Answer again with "
                        "valid JSON, keep every field short, and close every bracket.")
                    prompt = await self._distill(plan, await self._assemble(plan, lookup),
                                                 lookup, None)
                    yield Progress({"stage": "repair", "attempt": attempt + 1,
                                    "reason": problem})
                    continue
                text = completion.text
                # the task's own words, not the story: quoting the story can be an answer
                problems = [str(p) for p in check_output(output, plan.task.text)]
                repairs: list[str] = []
            else:
                text, problems, repairs = _judge_prose(spec, completion.text, params.max_tokens)
            result = AgentResult(spec, plan.task, text, output, completion, prompt.report,
                                 attempt, problems=tuple(problems), repairs=tuple(repairs))
            if best is None or len(result.problems) < len(best.problems):
                best = result
            if not problems or retries <= 0:
                break
            retries -= 1
            params = replace(params, seed=_next_seed(params.seed, attempt))
            self.metrics.count_retry(spec.agent, spec.operation)
            yield Progress({"stage": "retry", "attempt": attempt + 1,
                            "reason": "; ".join(problems)[:_REPAIR_ERROR_CHARS]})
        assert best is not None  # the loop leaves only with an attempt kept
        yield replace(best, attempts=attempt, generation=stamp, messages=first_prompt)

    async def _distill_with_progress(
        self, plan: _Plan, prompt: AssembledPrompt, lookup: _CountingLookup | None,
        deadline: float,
    ) -> AsyncGenerator[Progress | AssembledPrompt, None]:
        """:meth:`_distill` as a task, yielding a :class:`Progress` per step as it happens
        and the distilled prompt last.

        Raises:
            GenerationTimeout: ``deadline`` (loop time) passed while distilling.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        distilling = asyncio.create_task(self._distill(plan, prompt, lookup, events.put))
        try:
            while not distilling.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({distilling, getter}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, deadline - loop.time()))
                if getter.done():
                    yield Progress(getter.result())
                else:
                    getter.cancel()
                    if not distilling.done() and loop.time() >= deadline:
                        raise self._timeout()
            yield distilling.result()
        finally:
            distilling.cancel()

    async def stream(
        self, spec: AgentSpec, request: Any, *, sampling: SamplingRecord | None = None,
        replay_of: str | None = None,
    ) -> AsyncGenerator[Progress | Meta | TokenDelta | AgentResult, None]:
        """Yield :class:`Progress` while distilling, then :class:`Meta`, then the token deltas
        as the model writes them, a :class:`Progress` before any further attempt (and its
        tokens), and last the :class:`AgentResult` (checked as :meth:`run` checks it).

        The request is validated and assembled once, and its place in the model's queue taken,
        before anything is yielded, so the HTTP layer can still answer bad input with a plain
        4xx and a full queue with a plain 503. Waiting for its turn happens inside the stream
        (a client that leaves while queued never starts); a queue timeout or the deadline end
        the stream with an error. Closing the stream stops the generation within a token and
        frees the model. An answer from the response cache takes no turn: its ``meta``, its
        whole text as one token delta, and its result. ``sampling`` and ``replay_of`` as for
        :meth:`run`.
        """
        started = time.perf_counter()
        loop_started = asyncio.get_running_loop().time()
        begun = await self._begin(spec, request, sampling, started)
        if begun.hit is not None:
            return _from_cache(begun.hit)
        turn = self.scheduler.reserve()
        return self._stream(spec, request, begun, turn, started, loop_started, replay_of)

    async def _stream(
        self, spec: AgentSpec, request: Any, begun: _Begun, turn: Turn, started: float,
        loop_started: float, replay_of: str | None,
    ) -> AsyncGenerator[Progress | Meta | TokenDelta | AgentResult, None]:
        """The stream in its turn. An error raised here reaches the client as a stream
        ``error`` event, not an HTTP error answer, so it is counted here."""
        agent, operation = spec.agent, spec.operation
        plan = begun.plan
        try:
            async with turn:
                self.metrics.observe_queue(agent, operation, turn.queue_s)
                deadline = self._deadline(loop_started, turn)
                items = self._by_deadline(self._answer(
                    spec, request, plan, begun.prompt, begun.lookup, turn, streamed=True,
                    deadline=deadline, stamp=begun.stamp), deadline)
                try:
                    async for item in items:
                        if isinstance(item, AgentResult):
                            kept = await self._keep(request, plan.params, item, replay_of)
                            self.metrics.observe_request(agent, operation,
                                                         time.perf_counter() - started)
                            yield kept
                        else:
                            yield item
                finally:
                    await items.aclose()
        except WriterAssistantError as error:
            self._stream_failed(error.code)
            raise
        except Exception:
            self._stream_failed("internal_error")
            raise
        finally:
            turn.cancel()  # a stream closed before its turn leaves the queue

    def _stream_failed(self, code: str) -> None:
        self.metrics.count_error(code)
        log_error_answer(code, None)

    async def _by_deadline(self, stream: AsyncGenerator[T, None],
                           deadline: float) -> AsyncGenerator[T, None]:
        """``stream``'s items, each awaited under ``deadline`` (loop time); closing this
        closes ``stream``.

        Raises:
            GenerationTimeout: the deadline passed while waiting for an item.
        """
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._timeout() from None
                yield item
        finally:
            await stream.aclose()


async def _final(items: AsyncGenerator[Any, None], kind: type[T], missing: str) -> T:
    """The first item of type ``kind`` in ``items`` (closed after it).

    Raises:
        GenerationFailed: ``items`` ended without one (``missing`` says what).
    """
    try:
        async for item in items:
            if isinstance(item, kind):
                return item
    finally:
        await items.aclose()
    raise GenerationFailed(missing)


def _shared(prompt: AssembledPrompt) -> SharedPrefix:
    """The prompt's shared block, owned by the request's tenant."""
    return SharedPrefix(messages=prompt.shared_messages, owner=current_tenant.get())


def _owner_only() -> SharedPrefix:
    """No shared block (nothing worth a snapshot), but the tenant's own KV state only."""
    return SharedPrefix(messages=0, owner=current_tenant.get())


def _invalid(spec: AgentSpec, request: Any, completion: Completion,
             problem: str) -> AgentOutputInvalid:
    """The error for JSON output that failed its repair attempt too: ``OutputTruncated``
    when it ran out of the ``max_tokens`` the caller set, else ``AgentOutputInvalid``."""
    max_tokens = getattr(request, "max_tokens", None)
    if completion.finish_reason == "length" and max_tokens is not None:
        return OutputTruncated(
            f"The {spec.agent} agent's answer did not fit max_tokens {max_tokens} (twice); "
            "raise max_tokens or leave it unset for the agent's default.",
            param="max_tokens",
        )
    return AgentOutputInvalid(
        f"The {spec.agent} agent's output was not valid after a repair attempt ({problem}). "
        "Try again, raise max_tokens or lower temperature.",
        param="max_tokens" if completion.finish_reason == "length" else None,
    )


def _judge_prose(spec: AgentSpec, text: str,
                 max_tokens: int) -> tuple[str, list[str], list[str]]:
    """Free text repaired and judged: (the text, its problems, what was cut).

    A loop is cut after its first copy. Chapter-like prose (``spec.prose``) also loses an
    assistant's preamble and must keep at least ``MIN_PROSE_WORDS`` words, or half of what
    ``max_tokens`` allows (0.75 words a token, the figure ``app.context.summaries`` uses) when
    that is less; chat and archive answers are short by nature, so only no text and loops
    count against them.
    """
    if not spec.prose:  # a chat answer may open as an assistant: cut only a loop
        verdict = check_prose(text, min_words=1)
        repairs = []
        if verdict.loop_start is not None:
            text = text[:verdict.loop_start]
            repairs.append(f"cut a loop repeating {verdict.loop_unit[:40]!r}")
            verdict = check_prose(text, min_words=1)
        kept = [str(p) for p in verdict.problems if p.rule is not Rule.preamble]
        return text.strip(), kept, repairs
    floor = max(1, min(MIN_PROSE_WORDS, int(max_tokens * 0.75 / 2)))
    repaired = repair_prose(text, min_words=floor)
    problems = [] if repaired.useful else [
        str(p) for p in check_prose(repaired.text, floor).problems]
    return repaired.text.strip(), problems, list(repaired.notes)


def _next_seed(seed: int | None, attempt: int) -> int:
    """The seed of the attempt after ``attempt``: the caller's seed moved on by one per
    attempt (reproducible), else a random one."""
    if seed is None:
        return random.randrange(2**31)
    return (seed + attempt) % 2**31


def _parse(model: type[BaseModel], completion: Completion) -> BaseModel:
    """Parse and validate JSON output.

    Raises:
        ValueError: the output was cut by max_tokens, is not JSON, or does not validate.
    """
    if completion.finish_reason != "stop":
        raise ValueError(
            f"the output ended ({completion.finish_reason}) after {completion.completion_tokens} "
            "tokens before the JSON was complete"
        )
    try:
        # The grammar lets raw newlines into strings; strict=False accepts them.
        data = json.loads(completion.text, strict=False)
        return model.model_validate(data)
    except (json.JSONDecodeError, ValidationError) as error:
        raise ValueError(str(error)) from error


def story_id_of(request: Any) -> str | None:
    """The story a request is about: its ``story_id``, else its story metadata's
    ``story_id`` (when a string)."""
    own = getattr(request, "story_id", None)
    if own:
        return str(own)
    context = getattr(request, "structured_context", None)
    value = context.metadata.get("story_id") if context is not None else None
    return value if isinstance(value, str) and value else None


def _cached_result(spec: AgentSpec, request: Any, plan: _Plan, record: GenerationRecord,
                   seconds: float) -> AgentResult:
    """The answer of a cached ``record`` for ``request`` (planned as ``plan``): its text,
    output, usage and report, with the timings of the lookup (``seconds``)."""
    output_model = spec.output_model_for(request)
    output = (output_model.model_validate(record.output)
              if output_model is not None and record.output is not None else None)
    elapsed_ms = seconds * 1000
    completion = Completion(
        record.text, record.usage.prompt_tokens, record.usage.completion_tokens,
        record.finish_reason,
        Timings(queue_ms=0.0, time_to_first_token_ms=elapsed_ms, total_ms=elapsed_ms),
        record.usage.prompt_tokens_details.cached_tokens)
    assert record.context_metadata is not None  # an agent call's record has its report
    return AgentResult(spec, plan.task, record.text, output, completion,
                       record.context_metadata,
                       record.attempts, problems=tuple(record.quality.problems),
                       repairs=tuple(record.quality.repairs),
                       generation=Stamp(record.id, record.sampling.seed, "hit",
                                        sampling=record.sampling, model=record.model))


async def _from_cache(result: AgentResult
                      ) -> AsyncGenerator[Progress | Meta | TokenDelta | AgentResult, None]:
    """A stream's items for an answer from the response cache: ``meta``, its text as one
    token delta, the result."""
    yield Meta(result.report, result.spec.echo(result.task, result.report),
               generation=result.generation)
    if result.text:
        yield TokenDelta(result.text)
    yield result
