"""The one generic agent runner: assemble the context, distill what overflows, call the
generator, check JSON output."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel, ValidationError

from app.agents.spec import AgentSpec, TaskInput
from app.config import Settings
from app.context.assembly import AgentTask, AssembledPrompt, assemble
from app.context.distill import SummaryJob, SummaryLookup
from app.context.elements import ContextElement, flatten
from app.context.report import AssemblyReport, DistillationStats
from app.context.summaries import DistillStats, Distiller, SummaryCache
from app.errors import (
    AgentOutputInvalid,
    GenerationFailed,
    GenerationTimeout,
    InvalidRequest,
    OutputTruncated,
    ServiceDraining,
    WriterAssistantError,
)
from app.llm.admission import Admission, Ticket
from app.llm.protocol import (
    ChatMessage,
    Completion,
    SamplingParams,
    StreamItem,
    TextGenerator,
    TokenDelta,
)
from app.observability.logging import log_error_answer, log_generation
from app.observability.metrics import Metrics
from app.schemas.requests import AgentRequest

#: Extra context elements for a request (e.g. archive passages); see ``AgentRunner``.
ExtraElements = Callable[[AgentRequest], Awaitable[list[ContextElement]]]

#: Receives one dict per distillation step (streamed as ``progress`` events).
ProgressCallback = Callable[[dict[str, object]], Awaitable[None]]

#: Assembly passes per request: one per level of summaries (see app.context.overflow), + 1.
_MAX_ASSEMBLY_PASSES = 8

#: Characters of a validation error quoted back to the model in the repair attempt.
_REPAIR_ERROR_CHARS = 300


@dataclass(frozen=True)
class Prepared:
    """A request ready to generate: the task, the assembled prompt and the sampling."""

    task: TaskInput
    prompt: AssembledPrompt
    params: SamplingParams


@dataclass(frozen=True)
class AgentResult:
    """The outcome of one agent call.

    ``text`` is the model's text (stripped); ``output`` the validated JSON output of JSON
    agents (else ``None``); ``attempts`` is 2 when the repair attempt was needed.
    """

    spec: AgentSpec
    task: TaskInput
    text: str
    output: BaseModel | None
    completion: Completion
    report: AssemblyReport
    attempts: int


@dataclass(frozen=True)
class Progress:
    """A distillation step, streamed before the first token so a client is never silent long."""

    data: dict[str, object]


@dataclass(frozen=True)
class Meta:
    """The assembly report and the fields the response echoes (first after any progress);
    ``messages`` is the prompt about to be generated from."""

    report: AssemblyReport
    summary: dict[str, object]
    messages: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """A request turned into what assembly needs."""

    task: TaskInput
    params: SamplingParams
    elements: list[ContextElement]
    agent_task: AgentTask
    max_context_tokens: int | None


class _TokenGaps:
    """Observes the seconds between consecutive token deltas of one generation (the first
    delta's wait is the time to first token, measured by the generator)."""

    def __init__(self, metrics: Metrics, spec: AgentSpec) -> None:
        self._observe = metrics.inter_token_latency.labels(agent=spec.agent,
                                                           operation=spec.operation).observe
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._observe(now - self._last)
        self._last = now


class _CountingLookup:
    """The summary cache as assembly's lookup, counting the summaries it finds."""

    def __init__(self, cache: SummaryCache) -> None:
        self.cache = cache
        self.hits = 0

    def get(self, job: SummaryJob) -> str | None:
        text = self.cache.get(job)
        self.hits += text is not None
        return text


class AgentRunner:
    """Runs agent operations on one text generator.

    ``extra_elements``, when given, supplies more context elements per request (the archive's
    retrieved passages); they compete for their layer's budget like any other element.
    ``distiller``, when given (and ``DISTILLATION_ENABLED``), summarizes what overflows.
    ``metrics`` receives the figures of every request and generation (the app's; a private
    one when not given), and every completed generation is logged as a ``generation`` event.
    """

    def __init__(
        self,
        settings: Settings,
        generator: TextGenerator,
        extra_elements: ExtraElements | None = None,
        distiller: Distiller | None = None,
        admission: Admission | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.extra_elements = extra_elements
        self.distiller = distiller
        self.admission = admission or Admission(settings.queue_max_waiting,
                                                settings.queue_max_wait_s)
        self.metrics = metrics if metrics is not None else Metrics()

    async def _generate(self, spec: AgentSpec, prepared: Prepared, queue_s: float,
                        attempt: int) -> Completion:
        """One generation under the ``GENERATION_TIMEOUT_S`` wall-clock cap, observed.

        Consumes the generator's stream (what its ``generate`` does too) so the gaps between
        token deltas are measured the same way on every backend.

        Raises:
            GenerationTimeout: the cap ran out; the generation was stopped and the model freed.
        """
        gaps = _TokenGaps(self.metrics, spec)
        stream = self.generator.stream(prepared.prompt.messages, prepared.params)
        try:
            async with asyncio.timeout(self.settings.generation_timeout_s):
                async for item in stream:
                    if isinstance(item, TokenDelta):
                        gaps.tick()
                    elif isinstance(item, Completion):
                        item.timings.queue_ms = queue_s * 1000
                        self._observe(spec, prepared.prompt.messages, item, False, attempt)
                        return item
        except TimeoutError:
            raise self._timeout() from None
        finally:
            await stream.aclose()
        raise GenerationFailed("the model stream ended without a completion")

    def _observe(self, spec: AgentSpec, messages: Sequence[ChatMessage], completion: Completion,
                 streamed: bool, attempt: int = 1) -> None:
        """Record a completed generation in the metrics and the log (the prompt and text
        only with ``LOG_PROMPTS``)."""
        self.metrics.observe_completion(spec.agent, spec.operation, completion)
        prompt = self.generator.render_prompt(messages) if self.settings.log_prompts else None
        log_generation(operation=spec.operation, agent=spec.agent, completion=completion,
                       streamed=streamed, attempt=attempt, prompt=prompt)

    def _stream_failed(self, code: str) -> None:
        self.metrics.count_error(code)
        log_error_answer(code, None)

    def _timeout(self) -> GenerationTimeout:
        return GenerationTimeout(
            f"The generation ran past the {self.settings.generation_timeout_s:g}-second cap and "
            "was stopped; lower max_tokens or shorten the context.",
        )

    def sampling(self, spec: AgentSpec, request: AgentRequest) -> SamplingParams:
        """Sampling for ``request``: its overrides, else the agent's, else the server's.

        Raises:
            InvalidRequest: ``max_tokens`` is above ``LLM_MAX_TOKENS_LIMIT``.
        """
        settings = self.settings
        limit = min(settings.llm_max_tokens_limit, spec.max_tokens_limit or 1 << 30)
        if request.max_tokens is not None and request.max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens {request.max_tokens} is above the limit of {limit} for "
                f"{spec.operation}.",
                param="max_tokens",
            )
        max_tokens = request.max_tokens or spec.max_tokens_for(request) or settings.llm_max_tokens
        temperature = request.temperature
        if temperature is None:
            temperature = spec.temperature if spec.temperature is not None else settings.llm_temperature
        output_model = spec.output_model_for(request)
        return SamplingParams(
            max_tokens=min(max_tokens, limit),
            temperature=temperature,
            top_p=settings.llm_top_p,
            top_k=settings.llm_top_k,
            repeat_penalty=settings.llm_repeat_penalty,
            seed=request.seed,
            json_schema=output_model.model_json_schema() if output_model else None,
        )

    async def _plan(self, spec: AgentSpec, request: AgentRequest, note: str) -> _Plan:
        task = spec.build_task(request)
        if note:
            task = replace(task, text=f"{task.text}\n\n{note}")
        params = self.sampling(spec, request)
        elements = flatten(request.structured_context)
        if self.extra_elements is not None:
            extra = await self.extra_elements(request)
            elements += [replace(e, order=len(elements) + i) for i, e in enumerate(extra)]
        agent_task = AgentTask(
            agent=spec.agent, role=spec.role, task=task.text, layers=spec.layers,
            history=task.history,
        )
        config = request.context_processing_config
        return _Plan(task, params, elements, agent_task,
                     config.max_context_tokens if config else None)

    async def _assemble(self, plan: _Plan, lookup: SummaryLookup | None) -> AssembledPrompt:
        generator = self.generator
        return await asyncio.to_thread(
            assemble,
            plan.elements,
            plan.agent_task,
            counter=generator,
            settings=self.settings,
            n_ctx=generator.n_ctx,
            model=generator.model_name,
            max_tokens=plan.params.max_tokens,
            max_context_tokens=plan.max_context_tokens,
            exclude=plan.task.exclude,
            summaries=lookup,
        )

    def _lookup(self) -> _CountingLookup | None:
        if self.distiller is None or not self.settings.distillation_enabled:
            return None
        return _CountingLookup(self.distiller.cache)

    async def _distill(
        self,
        plan: _Plan,
        prompt: AssembledPrompt,
        lookup: _CountingLookup | None,
        progress: ProgressCallback | None,
    ) -> AssembledPrompt:
        """Make the summaries assembly asked for and assemble again, until none is missing.

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
                await self.distiller.make(job, stats)
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

    async def prepare(
        self,
        spec: AgentSpec,
        request: AgentRequest,
        note: str = "",
        progress: ProgressCallback | None = None,
    ) -> Prepared:
        """Build the task, assemble (and distill) the context and choose the sampling,
        without generating the answer.

        ``note`` is appended to the task (used by the repair attempt); ``progress`` receives
        a dict per summary made.

        Raises:
            UnknownReference, InvalidRequest, ContextLengthExceeded: the request cannot be
                served as given.
            GenerationFailed: the model failed while distilling.
        """
        plan = await self._plan(spec, request, note)
        lookup = self._lookup()
        prompt = await self._assemble(plan, lookup)
        prompt = await self._distill(plan, prompt, lookup, progress)
        return Prepared(plan.task, prompt, plan.params)

    async def preview(self, spec: AgentSpec, request: AgentRequest) -> Prepared:
        """:meth:`prepare` for a preview: it may distill, so it takes its turn in the queue.

        Raises what :meth:`prepare` raises, and ``QueueFull`` / ``QueueTimeout``.
        """
        async with self.admission.reserve():
            return await self.prepare(spec, request)

    async def run(self, spec: AgentSpec, request: AgentRequest) -> AgentResult:
        """Take a turn in the model's queue, then :meth:`_run` (see there).

        Raises:
            QueueFull: the queue is full (at once). QueueTimeout: the turn did not come in time.
        """
        started = time.perf_counter()
        ticket = self.admission.reserve()
        async with ticket:
            self.metrics.observe_queue(spec.agent, spec.operation, ticket.queue_s)
            result = await self._run(spec, request, ticket.queue_s)
        self.metrics.observe_request(spec.agent, spec.operation, time.perf_counter() - started)
        return result

    async def _run(self, spec: AgentSpec, request: AgentRequest,
                   queue_s: float = 0.0) -> AgentResult:
        """Run ``spec`` on ``request`` to completion.

        JSON agents decode under a grammar from their output model; output that does not parse
        or validate, or that ran out of ``max_tokens``, gets one repair attempt.

        Raises:
            AgentOutputInvalid: the repair attempt failed too.
            plus what :meth:`prepare` and the generator raise.
        """
        prepared = await self.prepare(spec, request)
        completion = await self._generate(spec, prepared, queue_s, attempt=1)
        output_model = spec.output_model_for(request)
        if output_model is None:
            return AgentResult(spec, prepared.task, completion.text.strip(), None, completion,
                               prepared.prompt.report, 1)
        try:
            output = _parse(output_model, completion)
            return AgentResult(spec, prepared.task, completion.text, output, completion,
                               prepared.prompt.report, 1)
        except ValueError as first_error:
            problem = str(first_error)[:_REPAIR_ERROR_CHARS]
        note = (
            f"Your previous answer was rejected: {problem}. Answer again with valid JSON, keep "
            "every field short, and close every bracket."
        )
        prepared = await self.prepare(spec, request, note)
        completion = await self._generate(spec, prepared, queue_s, attempt=2)
        try:
            output = _parse(output_model, completion)
        except ValueError as second_error:
            if completion.finish_reason == "length" and request.max_tokens is not None:
                raise OutputTruncated(
                    f"The {spec.agent} agent's answer did not fit max_tokens "
                    f"{request.max_tokens} (twice); raise max_tokens or leave it unset for the "
                    f"agent's default.",
                    param="max_tokens",
                ) from second_error
            raise AgentOutputInvalid(
                f"The {spec.agent} agent's output was not valid after a repair attempt "
                f"({str(second_error)[:_REPAIR_ERROR_CHARS]}). Try again, raise max_tokens or "
                "lower temperature.",
                param="max_tokens" if completion.finish_reason == "length" else None,
            ) from second_error
        return AgentResult(spec, prepared.task, completion.text, output, completion,
                           prepared.prompt.report, 2)

    async def stream(
        self, spec: AgentSpec, request: AgentRequest
    ) -> AsyncIterator[Progress | Meta | StreamItem]:
        """Yield :class:`Progress` while distilling, then :class:`Meta`, then the generator's
        token deltas and final completion.

        The request is validated and assembled once, and its place in the model's queue taken,
        before anything is yielded, so the HTTP layer can still answer bad input with a plain
        4xx and a full queue with a plain 503. Waiting for its turn happens inside the stream
        (a client that leaves while queued never starts); a queue timeout or the generation
        cap end the stream with an error.
        """
        started = time.perf_counter()
        plan = await self._plan(spec, request, "")
        lookup = self._lookup()
        prompt = await self._assemble(plan, lookup)
        ticket = self.admission.reserve()
        return self._stream(spec, plan, prompt, lookup, ticket, started)

    async def _stream(
        self, spec: AgentSpec, plan: _Plan, prompt: AssembledPrompt,
        lookup: _CountingLookup | None, ticket: Ticket, started: float,
    ) -> AsyncIterator[Progress | Meta | StreamItem]:
        """The stream in its turn, observed. An error raised here reaches the client as a
        stream ``error`` event, not an HTTP error answer, so it is counted here."""
        agent, operation = spec.agent, spec.operation
        gaps = _TokenGaps(self.metrics, spec)
        messages: tuple[ChatMessage, ...] = ()
        try:
            async with ticket:
                self.metrics.observe_queue(agent, operation, ticket.queue_s)
                async for item in self._stream_in_turn(plan, prompt, lookup):
                    if isinstance(item, TokenDelta):
                        gaps.tick()
                    elif isinstance(item, Meta):
                        messages = item.messages
                    elif isinstance(item, Completion):
                        item.timings.queue_ms = ticket.queue_s * 1000
                        self._observe(spec, messages, item, True)
                        self.metrics.observe_request(agent, operation,
                                                     time.perf_counter() - started)
                    yield item
        except WriterAssistantError as error:
            self._stream_failed(error.code)
            raise
        except Exception:
            self._stream_failed("internal_error")
            raise
        finally:
            ticket.cancel()  # a stream closed before its turn leaves the queue

    async def _stream_in_turn(
        self, plan: _Plan, prompt: AssembledPrompt, lookup: _CountingLookup | None
    ) -> AsyncIterator[Progress | Meta | StreamItem]:
        events: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        distilling = asyncio.create_task(self._distill(plan, prompt, lookup, events.put))
        try:
            while not distilling.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({distilling, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield Progress(getter.result())
                else:
                    getter.cancel()
            prompt = distilling.result()
        finally:
            distilling.cancel()
        yield Meta(prompt.report, plan.task.summary, tuple(prompt.messages))
        stream = self.generator.stream(prompt.messages, plan.params)
        deadline = asyncio.get_running_loop().time() + self.settings.generation_timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._timeout() from None
                if self.admission.streams_stopped:
                    raise ServiceDraining("The server is shutting down; this stream was ended "
                                          "before it finished. Retry after the restart.")
                yield item
        finally:
            await stream.aclose()


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
