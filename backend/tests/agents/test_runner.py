"""The agent runner's checks on a scripted model: sampling, JSON repair, truncation, free text,
model failures and the stream's framing.

Everything goes through the runner's public methods (``run``, ``stream``, ``sampling``) with
the registry's specs and the API's request models, and is observed through what the fake
generator recorded, so these tests hold across refactors of the runner's internals.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from app.agents.outputs import EditorReview
from app.agents.registry import REGISTRY
from app.agents.runner import AgentRunner, Meta, Progress
from app.agents.spec import AgentResult
from app.bootstrap import build_runner, close_runner
from app.config import Settings
from app.context.summaries import SUMMARIZER_ROLE
from app.errors import (
    AgentOutputInvalid,
    ArchiveUnavailable,
    GenerationFailed,
    GenerationTimeout,
    InvalidRequest,
    ModelOverloaded,
    OutputTruncated,
)
from app.llm.fake import FakeGenerator
from app.llm.protocol import (
    ChatMessage,
    Completion,
    SamplingParams,
    SharedPrefix,
    StreamItem,
    TokenDelta,
)
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.schemas.archive import Passage, RagChatRequest, RagQueryRequest
from app.schemas.requests import (
    ChapterOutlinesRequest,
    CharacterDetailsRequest,
    CharacterFeedbackRequest,
    EditorReviewRequest,
    FleshOutRequest,
    GenerateChapterRequest,
    LlmChatRequest,
    ModifyChapterRequest,
    RaterFeedbackRequest,
    RegenerateBioRequest,
)
from tests.conftest import seed_example

EDITOR = REGISTRY["editor-review"]
WRITER = REGISTRY["generate-chapter"]
OUTLINES = REGISTRY["generate-chapter-outlines"]

GOOD_REVIEW = json.dumps({"suggestions": [
    {"issue": "Flat opening", "suggestion": "Start with a sound.", "priority": "high"}]})
#: Valid JSON that the output model rejects: "urgent" is not a priority.
BAD_PRIORITY = json.dumps({"suggestions": [
    {"issue": "Flat opening", "suggestion": "Start with a sound.", "priority": "urgent"}]})


def long_review(words: int) -> str:
    """A valid review whose text is about ``words`` fake tokens (the fake cuts at spaces)."""
    return json.dumps({"suggestions": [
        {"issue": "Slow " + "very " * words, "suggestion": "Cut.", "priority": "low"}]})


# --- building a runner --------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path


def make_settings(state: Path, **overrides: object) -> Settings:
    """Test settings; the content check judges but does not retry unless a test asks
    (``quality_max_retries``), so the repair tests count their own attempts."""
    return Settings(**{"summary_cache_dir": state / "summaries",
                       "archive_db_path": state / "archive", "archive_enabled": False,
                       "rate_limit_per_minute": 0, "rate_limit_concurrent": 0,
                       "quality_max_retries": 0, **overrides})


@pytest.fixture
def build(state: Path) -> Iterator:
    """``build(generator, **settings)``: a runner on ``generator`` with distillation (as the app
    builds it); closed after the test."""
    runners: list[AgentRunner] = []

    def make(generator, **overrides: object) -> AgentRunner:
        settings = make_settings(state, **overrides)
        runner = build_runner(settings, generator, Scheduler(8, 60), Metrics())
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        close_runner(runner)


def review_request(**fields: object) -> EditorReviewRequest:
    return EditorReviewRequest.model_validate(
        {**seed_example(), "chapter_to_review": "Aria walked into the dark wood.", **fields})


def chapter_request(**fields: object) -> GenerateChapterRequest:
    return GenerateChapterRequest.model_validate({**seed_example(), **fields})


def generations(runner: AgentRunner, spec, finish_reason: str) -> float:
    value = runner.metrics.registry.get_sample_value(
        "writer_assistant_generations_total",
        {"agent": spec.agent, "operation": spec.operation, "finish_reason": finish_reason})
    return value or 0.0


def backend_errors(runner: AgentRunner, code: str) -> float:
    value = runner.metrics.registry.get_sample_value(
        "writer_assistant_backend_errors_total", {"code": code})
    return value or 0.0


# --- JSON agents: repair ------------------------------------------------------------------


async def test_invalid_json_is_repaired_on_the_shared_block(build):
    fake = FakeGenerator(replies=["{not json", GOOD_REVIEW])
    runner = build(fake)

    result = await runner.run(EDITOR, review_request())

    assert result.attempts == 2
    assert isinstance(result.output, EditorReview)
    assert result.output == EditorReview.model_validate_json(GOOD_REVIEW)
    assert result.completion.finish_reason == "stop"
    assert len(fake.calls) == 2
    (first, first_params), (second, second_params) = fake.calls
    assert first_params == second_params  # same sampling, grammar included
    assert first_params.json_schema == EditorReview.model_json_schema()
    # Both attempts declare the same shared block, and it is the same messages byte for byte:
    # the repair attempt can reuse the first attempt's KV state.
    shared = fake.prefixes[0].messages
    assert shared >= 1
    assert fake.prefixes[1].messages == shared
    assert first[:shared] == second[:shared]
    # The repair note comes after the shared block, appended to the first task, quoting the
    # parse error.
    assert len(second) == len(first)
    assert second[-1].content.startswith(first[-1].content)
    note = second[-1].content[len(first[-1].content):]
    assert "Expecting property name" in note
    assert "JSON" in note
    assert not any("Expecting property name" in m.content for m in first)
    assert generations(runner, EDITOR, "stop") == 2  # both attempts are observed


async def test_repair_note_follows_the_shared_block_of_a_story_that_was_distilled(build):
    """A story too large for the window: the first attempt distills it; the repair attempt
    assembles the same shared block again (summaries from the cache) with the note after it."""
    agent_replies = iter(["[]", GOOD_REVIEW])

    def reply(messages: Sequence[ChatMessage], params: SamplingParams) -> str:
        if messages[0].content.startswith(SUMMARIZER_ROLE):
            text = messages[-1].content.split("Text:\n", 1)[1]
            return " ".join(text.split()[: int(params.max_tokens * 0.5)]) + "."
        return next(agent_replies)

    fake = FakeGenerator(replies=[reply], context_window=4096)
    runner = build(fake)
    body = seed_example()
    body["structured_context"]["chapters"] = [
        {"number": n, "title": f"Part {n}",
         "content": "\n\n".join(f"In chapter {n} event {i} happened to Aria." for i in range(60))}
        for n in range(1, 7)]
    request = EditorReviewRequest.model_validate({**body, "chapter_number": 6, "max_tokens": 200})

    result = await runner.run(EDITOR, request)

    assert result.attempts == 2
    agent_calls = [i for i, (messages, _) in enumerate(fake.calls)
                   if not messages[0].content.startswith(SUMMARIZER_ROLE)]
    assert len(agent_calls) == 2
    assert len(fake.calls) > 2  # the story did not fit whole: summaries were made
    assert agent_calls[1] == agent_calls[0] + 1  # ... once: the repair reuses them
    first, second = (fake.calls[i][0] for i in agent_calls)
    shared = fake.prefixes[agent_calls[0]].messages
    assert fake.prefixes[agent_calls[1]].messages == shared
    assert first[:shared] == second[:shared]
    assert "Summary of chapter" in first[0].content
    assert second[-1].content.startswith(first[-1].content)
    assert len(second[-1].content) > len(first[-1].content)


async def test_invalid_twice_is_agent_output_invalid(build):
    fake = FakeGenerator(replies=["{not json", "still not json"])
    runner = build(fake)

    with pytest.raises(AgentOutputInvalid) as caught:
        await runner.run(EDITOR, review_request())

    error = caught.value
    assert type(error) is AgentOutputInvalid
    assert error.code == "agent_output_invalid"
    assert error.param is None  # nothing ran out of tokens: not the caller's max_tokens
    assert "editor" in error.message
    assert len(fake.calls) == 2  # one repair attempt, never a third


async def test_json_that_fails_the_output_model_is_repaired(build):
    fake = FakeGenerator(replies=[BAD_PRIORITY, GOOD_REVIEW])
    runner = build(fake)

    result = await runner.run(EDITOR, review_request())

    assert result.attempts == 2
    assert result.output.suggestions[0].priority.value == "high"
    note = fake.calls[1][0][-1].content
    assert "priority" in note  # the validation error is quoted back to the model
    assert "priority" in fake.calls[0][0][-1].content  # (the task names it too) ...
    assert note.count("priority") > fake.calls[0][0][-1].content.count("priority")


async def test_json_that_fails_the_output_model_twice_is_invalid(build):
    fake = FakeGenerator(replies=[BAD_PRIORITY])
    runner = build(fake)

    with pytest.raises(AgentOutputInvalid) as caught:
        await runner.run(EDITOR, review_request())

    assert type(caught.value) is AgentOutputInvalid
    assert "priority" in caught.value.message
    assert len(fake.calls) == 2


async def test_valid_first_answer_needs_one_attempt(build):
    fake = FakeGenerator(replies=[GOOD_REVIEW, "{never used"])
    runner = build(fake)

    result = await runner.run(EDITOR, review_request())

    assert result.attempts == 1
    assert result.output == EditorReview.model_validate_json(GOOD_REVIEW)
    assert len(fake.calls) == 1


async def test_outlines_output_model_follows_the_request(build):
    """The output model of generate-chapter-outlines is built per request: two outlines when
    two are asked for, so one outline is repaired."""
    one = {"number": 1, "title": "In", "summary": "She enters."}
    two = {"number": 2, "title": "Out", "summary": "She leaves."}
    fake = FakeGenerator(replies=[json.dumps({"outlines": [one]}),
                                  json.dumps({"outlines": [one, two]})])
    runner = build(fake)
    request = ChapterOutlinesRequest.model_validate({**seed_example(), "number_of_chapters": 2})

    result = await runner.run(OUTLINES, request)

    assert result.attempts == 2
    assert [o.number for o in result.output.outlines] == [1, 2]


# --- JSON agents: truncation --------------------------------------------------------------


async def test_answer_cut_by_max_tokens_gets_the_repair_attempt(build):
    fake = FakeGenerator(replies=[long_review(80), GOOD_REVIEW])
    runner = build(fake)

    result = await runner.run(EDITOR, review_request(max_tokens=40))

    assert result.attempts == 2
    assert result.completion.finish_reason == "stop"
    assert result.output == EditorReview.model_validate_json(GOOD_REVIEW)
    assert fake.produced[0] == 40  # the first answer ran out of the request's tokens
    note = fake.calls[1][0][-1].content
    assert "length" in note and "40" in note  # the note says why the answer was rejected
    assert generations(runner, EDITOR, "length") == 1
    assert generations(runner, EDITOR, "stop") == 1


async def test_cut_twice_with_max_tokens_set_is_output_truncated(build):
    fake = FakeGenerator(replies=[long_review(80)])
    runner = build(fake)

    with pytest.raises(OutputTruncated) as caught:
        await runner.run(EDITOR, review_request(max_tokens=40))

    error = caught.value
    assert error.code == "max_tokens_too_small"
    assert error.param == "max_tokens"
    assert "40" in error.message
    assert isinstance(error, AgentOutputInvalid)  # still an output error for who catches that
    assert fake.produced == [40, 40]


async def test_cut_twice_with_max_tokens_unset_is_invalid_output_about_max_tokens(build):
    """With no max_tokens in the request the agent's own default ran out: not the caller's
    fault, so no max_tokens_too_small, but the error still points at max_tokens."""
    fake = FakeGenerator(replies=[long_review(EDITOR.max_tokens + 50)])
    runner = build(fake)

    with pytest.raises(AgentOutputInvalid) as caught:
        await runner.run(EDITOR, review_request())

    error = caught.value
    assert type(error) is AgentOutputInvalid
    assert error.code == "agent_output_invalid"
    assert error.param == "max_tokens"
    assert fake.produced == [EDITOR.max_tokens, EDITOR.max_tokens]


async def test_cut_then_invalid_is_invalid_output_not_truncation(build):
    fake = FakeGenerator(replies=[long_review(80), "{not json"])
    runner = build(fake)

    with pytest.raises(AgentOutputInvalid) as caught:
        await runner.run(EDITOR, review_request(max_tokens=40))

    assert type(caught.value) is AgentOutputInvalid
    assert caught.value.param is None  # the last answer was complete, just not JSON


# --- free-text agents ---------------------------------------------------------------------


async def test_free_text_is_stripped_and_not_validated(build):
    fake = FakeGenerator(replies=["  {The forest was quiet.\n\n", "never used"])
    runner = build(fake)

    result = await runner.run(WRITER, chapter_request())

    assert result.attempts == 1
    assert result.output is None
    assert result.text == "{The forest was quiet."
    assert len(fake.calls) == 1
    assert fake.calls[0][1].json_schema is None  # no grammar for prose
    assert result.task.summary["chapter_number"] == 1


async def test_free_text_cut_by_max_tokens_is_returned_as_is(build):
    fake = FakeGenerator(replies=["one two three four five six seven"])
    runner = build(fake)

    result = await runner.run(WRITER, chapter_request(max_tokens=3))

    assert result.attempts == 1
    assert result.text == "one two three"
    assert result.completion.finish_reason == "length"
    assert len(fake.calls) == 1


# --- sampling -----------------------------------------------------------------------------


def test_sampling_agent_defaults_over_server_defaults(build):
    runner = build(FakeGenerator(), llm_max_tokens=333, llm_temperature=0.9, llm_top_p=0.8,
                   llm_top_k=12, llm_repeat_penalty=1.3)

    editor = runner.sampling(EDITOR, review_request())
    writer = runner.sampling(WRITER, chapter_request())
    # The writer has defaults of its own now (0.8 / 2000, the original Writer Assistant's
    # table); it used to take the server's. The assistant still does.
    chat = runner.sampling(REGISTRY["llm-chat"], LlmChatRequest.model_validate(
        {**seed_example(), "messages": [{"role": "user", "content": "Who is Aria?"}]}))

    assert (editor.max_tokens, editor.temperature) == (EDITOR.max_tokens, EDITOR.temperature)
    assert (writer.max_tokens, writer.temperature) == (WRITER.max_tokens, WRITER.temperature)
    assert (chat.max_tokens, chat.temperature) == (333, 0.9)
    for params in (editor, writer, chat):
        assert (params.top_p, params.top_k, params.repeat_penalty) == (0.8, 12, 1.3)
        assert params.seed is None


def test_sampling_request_overrides_win(build):
    runner = build(FakeGenerator(), llm_max_tokens=333, llm_temperature=0.9)

    for spec, request in [
        (EDITOR, review_request(max_tokens=100, temperature=0.0, seed=7)),
        (WRITER, chapter_request(max_tokens=100, temperature=0.0, seed=7)),
    ]:
        params = runner.sampling(spec, request)
        # temperature 0.0 is an override, not "unset"
        assert (params.max_tokens, params.temperature, params.seed) == (100, 0.0, 7)


@pytest.mark.parametrize(("spec", "limit"), [(EDITOR, EDITOR.max_tokens_limit), (WRITER, 4096)])
def test_max_tokens_above_the_limit_is_invalid_request(build, spec, limit):
    runner = build(FakeGenerator(), llm_max_tokens_limit=4096)
    request = (review_request if spec is EDITOR else chapter_request)

    assert runner.sampling(spec, request(max_tokens=limit)).max_tokens == limit
    with pytest.raises(InvalidRequest) as caught:
        runner.sampling(spec, request(max_tokens=limit + 1))
    assert caught.value.code == "invalid_request"
    assert caught.value.param == "max_tokens"
    assert str(limit) in caught.value.message


def test_server_limit_below_the_agent_limit_wins(build):
    runner = build(FakeGenerator(), llm_max_tokens_limit=1000)

    with pytest.raises(InvalidRequest) as caught:
        runner.sampling(EDITOR, review_request(max_tokens=1001))
    assert caught.value.param == "max_tokens"
    assert runner.sampling(EDITOR, review_request(max_tokens=1000)).max_tokens == 1000


async def test_max_tokens_above_the_limit_fails_before_any_generation(build):
    fake = FakeGenerator(replies=[GOOD_REVIEW])
    runner = build(fake)

    with pytest.raises(InvalidRequest):
        await runner.run(EDITOR, review_request(max_tokens=EDITOR.max_tokens_limit + 1))
    with pytest.raises(InvalidRequest):
        await runner.stream(WRITER, chapter_request(max_tokens=10_000))
    assert fake.calls == []


#: A minimal valid request of every operation.
REQUESTS: dict[str, BaseModel] = {
    "generate-chapter": chapter_request(),
    "modify-chapter": ModifyChapterRequest.model_validate(
        {**seed_example(), "current_chapter": "Old text.", "user_request": "Make it darker."}),
    "flesh-out": FleshOutRequest.model_validate({**seed_example(), "text_to_flesh_out": "Run."}),
    "editor-review": review_request(),
    "character-feedback": CharacterFeedbackRequest.model_validate(
        {**seed_example(), "character_name": "Aria", "plot_point": "A wolf howls."}),
    "rater-feedback": RaterFeedbackRequest.model_validate(
        {**seed_example(), "plot_point": "A wolf howls."}),
    "generate-character-details": CharacterDetailsRequest.model_validate(
        {**seed_example(), "character_name": "Aria"}),
    "regenerate-bio": RegenerateBioRequest.model_validate(
        {**seed_example(), "character_name": "hero"}),
    "generate-chapter-outlines": ChapterOutlinesRequest.model_validate(seed_example()),
    "llm-chat": LlmChatRequest.model_validate(
        {**seed_example(), "messages": [{"role": "user", "content": "Who is Aria?"}]}),
    "rag-query": RagQueryRequest.model_validate({"question": "Who keeps the lighthouse?"}),
    "rag-chat": RagChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "Who keeps the lighthouse?"}]}),
}

JSON_AGENTS = {"editor-review", "character-feedback", "rater-feedback",
               "generate-character-details", "generate-chapter-outlines"}


def test_every_operation_has_a_request_here():
    assert set(REQUESTS) == set(REGISTRY)


@pytest.mark.parametrize("operation", sorted(REGISTRY))
def test_json_schema_only_for_json_agents(build, operation):
    runner = build(FakeGenerator())
    spec, request = REGISTRY[operation], REQUESTS[operation]

    params = runner.sampling(spec, request)

    if operation in JSON_AGENTS:
        model = spec.output_model_for(request)
        assert model is not None
        assert params.json_schema == model.model_json_schema()
    else:
        assert params.json_schema is None


@pytest.mark.parametrize("chapters", [1, 3, 7, 12])
def test_outline_max_tokens_scale_with_the_number_of_chapters(build, chapters):
    runner = build(FakeGenerator())
    request = ChapterOutlinesRequest.model_validate(
        {**seed_example(), "number_of_chapters": chapters})

    params = runner.sampling(OUTLINES, request)

    assert params.max_tokens == 80 + 220 * chapters
    outlines = params.json_schema["properties"]["outlines"]
    assert outlines["minItems"] == outlines["maxItems"] == chapters


def test_outline_tokens_are_capped_by_the_server_limit(build):
    """The per-request default above LLM_MAX_TOKENS_LIMIT is lowered to it, not refused."""
    runner = build(FakeGenerator(), llm_max_tokens_limit=1000)
    request = ChapterOutlinesRequest.model_validate({**seed_example(), "number_of_chapters": 12})

    assert runner.sampling(OUTLINES, request).max_tokens == 1000


# --- the model failing --------------------------------------------------------------------


class ScriptedStream(FakeGenerator):
    """A fake whose stream for each call is scripted: a list of items, where an exception
    instance is raised at its place. Calls past the script repeat the last one."""

    def __init__(self, *scripts: list[StreamItem | BaseException]) -> None:
        super().__init__()
        self.scripts = list(scripts)

    async def stream(self, messages: Sequence[ChatMessage], params: SamplingParams,
                     prefix: SharedPrefix | None = None) -> AsyncIterator[StreamItem]:
        script = self.scripts[min(len(self.calls), len(self.scripts) - 1)]
        self.calls.append((list(messages), params))
        self.prefixes.append(prefix)
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item


def done(text: str, finish: str = "stop") -> Completion:
    return Completion(text, 10, len(text.split()), finish)


async def test_model_failure_mid_stream_is_generation_failed(build):
    fake = FakeGenerator(replies=["one two three four five"], fail_after=2)
    runner = build(fake)

    with pytest.raises(GenerationFailed) as caught:
        await runner.run(WRITER, chapter_request())

    assert caught.value.code == "generation_failed"
    assert fake.produced == [2]
    assert generations(runner, WRITER, "stop") == 0


async def test_stream_that_ends_without_a_completion_is_generation_failed(build):
    runner = build(ScriptedStream([TokenDelta("half ")]))

    with pytest.raises(GenerationFailed, match="without a completion"):
        await runner.run(WRITER, chapter_request())


async def test_generator_domain_errors_pass_through(build):
    overloaded = ModelOverloaded("busy", retry_after=3)
    runner = build(ScriptedStream([TokenDelta("a "), overloaded]))

    with pytest.raises(ModelOverloaded) as caught:
        await runner.run(WRITER, chapter_request())

    assert caught.value is overloaded
    assert caught.value.retry_after == 3


async def test_failure_in_the_repair_attempt_is_the_models_error(build):
    fake = ScriptedStream([done("{not json")],
                          [TokenDelta("{"), GenerationFailed("the model broke")])
    runner = build(fake)

    with pytest.raises(GenerationFailed, match="the model broke"):
        await runner.run(EDITOR, review_request())
    assert len(fake.calls) == 2


async def test_unexpected_generator_exception_is_not_wrapped(build):
    """The runner leaves non-domain errors alone (backends wrap their own failures in
    GenerationFailed; the HTTP layer answers anything else as internal_error)."""
    runner = build(ScriptedStream([RuntimeError("boom")]))

    with pytest.raises(RuntimeError, match="boom"):
        await runner.run(WRITER, chapter_request())


async def test_generation_past_the_deadline_is_generation_timeout(build):
    fake = FakeGenerator(replies=["word " * 400], token_delay_s=0.01)
    runner = build(fake, generation_timeout_s=0.3)

    with pytest.raises(GenerationTimeout) as caught:
        await runner.run(WRITER, chapter_request())
    assert caught.value.code == "generation_timeout"
    assert sum(fake.produced) < 400  # stopped, not run to its end


# --- the stream ---------------------------------------------------------------------------


async def collect(stream: AsyncIterator) -> list:
    return [item async for item in stream]


async def test_stream_yields_meta_then_tokens_then_one_result(build):
    fake = FakeGenerator(replies=["The forest was quiet. Aria listened."])
    runner = build(fake)

    items = await collect(await runner.stream(WRITER, chapter_request()))

    kinds = [type(item) for item in items if not isinstance(item, Progress)]
    assert kinds[0] is Meta
    assert kinds[-1] is AgentResult
    assert kinds.count(Meta) == 1 and kinds.count(AgentResult) == 1
    assert set(kinds[1:-1]) == {TokenDelta}
    meta = next(item for item in items if isinstance(item, Meta))
    assert list(meta.messages) == fake.calls[0][0]  # the prompt it announced is the one used
    assert meta.echo["chapter_number"] == 1
    deltas = "".join(item.text for item in items if isinstance(item, TokenDelta))
    assert deltas == items[-1].text == "The forest was quiet. Aria listened."
    assert generations(runner, WRITER, "stop") == 1


async def test_stream_failure_after_tokens_raises_and_is_counted(build):
    fake = FakeGenerator(replies=["one two three four five"], fail_after=2)
    runner = build(fake)
    items: list = []

    with pytest.raises(GenerationFailed):
        async for item in await runner.stream(WRITER, chapter_request()):
            items.append(item)

    assert isinstance(items[0], Meta)
    assert [type(item) for item in items[1:]] == [TokenDelta, TokenDelta]
    assert not any(isinstance(item, AgentResult) for item in items)
    assert backend_errors(runner, "generation_failed") == 1


async def test_stream_unexpected_exception_is_counted_as_internal_error(build):
    runner = build(ScriptedStream([RuntimeError("boom")]))

    with pytest.raises(RuntimeError):
        await collect(await runner.stream(WRITER, chapter_request()))

    assert backend_errors(runner, "internal_error") == 1


# --- the archivist (RAG) runs through the same runner ------------------------------------------


def passage(n: int, text: str, score: float) -> Passage:
    return Passage(id=f"c{n}", file="lighthouse.txt", title="The Lighthouse",
                   chapter=f"CHAPTER {n}", chapter_number=n, chunk_index=n, start=0,
                   end=len(text), score=score, text=text)


async def test_rag_answers_are_an_agent_grounded_on_numbered_passages(build):
    runner = build(FakeGenerator(replies=["Tom kept it [1], for forty years [2][9]."]))
    queries = []

    async def retrieve(query, request):
        queries.append((query, request.top_k))
        return [passage(1, "Old Tom kept the light.", 0.9),
                passage(2, "He kept it for forty years.", 0.7)]

    runner.retrieve = retrieve
    spec = REGISTRY["rag-query"]
    request = RagQueryRequest.model_validate({"question": "Who kept the light?", "top_k": 2})
    result = await runner.run(spec, request)
    assert queries == [("Who kept the light?", 2)]
    body = spec.respond(result)
    assert [s["n"] for s in body["sources"]] == [1, 2]
    assert body["cited"] == [1, 2]  # [9] names no source
    system = runner.generator.calls[-1][0][0].content
    assert system.startswith("You answer questions about the author's story archive")
    assert "[1] (The Lighthouse, CHAPTER 1)\nOld Tom kept the light." in system
    assert runner.generator.calls[-1][1].temperature == 0.2
    assert result.report.agent == "archive"


async def test_rag_without_an_archive_is_archive_unavailable(build):
    runner = build(FakeGenerator(replies=["Unused."]))
    with pytest.raises(ArchiveUnavailable):
        await runner.run(REGISTRY["rag-query"],
                         RagQueryRequest.model_validate({"question": "Who?"}))
    assert runner.generator.calls == []


async def test_rag_passages_that_do_not_fit_are_left_out_from_the_end(build):
    runner = build(FakeGenerator(replies=["Fine [1]."], context_window=1024))

    async def retrieve(query, request):
        return [passage(i, f"Passage {i}. " + "The keeper climbed the stairs. " * 120, 1 - i / 10)
                for i in range(1, 6)]

    runner.retrieve = retrieve
    request = RagQueryRequest.model_validate({"question": "Who?", "max_tokens": 100})
    result = await runner.run(REGISTRY["rag-query"], request)
    given = REGISTRY["rag-query"].respond(result)["sources"]
    numbers = [s["n"] for s in given]
    assert numbers == sorted(numbers) and numbers[0] == 1
    fates = {e.id: e.fate.value for e in result.report.elements}
    assert result.report.prompt_tokens + 100 <= result.report.window_tokens
    assert len(numbers) < 5  # five long passages do not fit 1,024 tokens
    assert fates["sources[4]"] in ("dropped", "trimmed") and fates["sources[0]"] == "kept"


# --- answers worth reading: the content check and its retries ------------------------------

#: Valid JSON that says nothing (seen on the embedded model).
EMPTY_REVIEW = json.dumps({"suggestions": [
    {"issue": "1234567890", "suggestion": "1234567890", "priority": "high"}]})


async def test_a_json_answer_that_says_nothing_is_tried_again_with_another_seed(build):
    fake = FakeGenerator(replies=[EMPTY_REVIEW, GOOD_REVIEW])
    runner = build(fake, quality_max_retries=2)
    result = await runner.run(EDITOR, review_request(seed=7))
    assert result.attempts == 2 and not result.problems
    assert result.output == EditorReview.model_validate_json(GOOD_REVIEW)
    (first, first_params), (second, second_params) = fake.calls
    assert first == second  # the same prompt: the shared block's KV state is reused
    assert (first_params.seed, second_params.seed) == (7, 8)
    retries = runner.metrics.registry.get_sample_value(
        "writer_assistant_answer_retries_total",
        {"agent": "editor", "operation": "editor-review"})
    assert retries == 1


async def test_retries_are_capped_and_the_problems_reported(build):
    fake = FakeGenerator(replies=[EMPTY_REVIEW])
    runner = build(fake, quality_max_retries=2)
    result = await runner.run(EDITOR, review_request())
    assert result.attempts == 3 and len(fake.calls) == 3
    assert result.problems and any("issue" in problem for problem in result.problems)


async def test_without_retries_the_answer_is_judged_only(build):
    fake = FakeGenerator(replies=[EMPTY_REVIEW, GOOD_REVIEW])
    runner = build(fake, quality_max_retries=0)
    result = await runner.run(EDITOR, review_request())
    assert result.attempts == 1 and result.problems and len(fake.calls) == 1


async def test_a_chapter_that_opens_with_an_assistants_preamble_is_cut_to_the_prose(build):
    prose = ("Alice stepped under the dark pines and listened to the wind move through the "
             "needles, and the forest answered her with the hush of falling snow. Somewhere "
             "ahead a lantern swung, and she followed it.")
    fake = FakeGenerator(replies=[f"I'm here to help with the chapter's prose, and I'll guide "
                                  f"you through the story.\n\n{prose}"])
    runner = build(fake, quality_max_retries=2)
    result = await runner.run(WRITER, chapter_request())
    assert result.text == prose and result.repairs and not result.problems
    assert result.attempts == 1


async def test_a_looping_chapter_is_retried_when_little_prose_is_left(build):
    loop = "the rabbit ran. " * 40
    good = ("Alice followed the rabbit down the hole, past cupboards and shelves, wondering "
            "aloud whether she would fall right through the earth and come out among the "
            "people who walk with their heads downward.")
    fake = FakeGenerator(replies=[loop, good])
    runner = build(fake, quality_max_retries=2)
    result = await runner.run(WRITER, chapter_request())
    assert result.attempts == 2 and result.text == good


async def test_a_json_agent_streams_its_json_then_the_validated_object(build):
    fake = FakeGenerator(replies=[EMPTY_REVIEW, GOOD_REVIEW])
    runner = build(fake, quality_max_retries=1)
    items = await collect(await runner.stream(EDITOR, review_request()))
    kinds = [type(item).__name__ for item in items]
    assert kinds[0] == "Meta" and kinds[-1] == "AgentResult"
    retry = next(item for item in items if isinstance(item, Progress))
    assert retry.data["stage"] == "retry" and retry.data["attempt"] == 2
    before = kinds.index("Progress")
    first_tokens = "".join(i.text for i in items[:before] if isinstance(i, TokenDelta))
    assert first_tokens == EMPTY_REVIEW
    result = items[-1]
    assert result.output == EditorReview.model_validate_json(GOOD_REVIEW)
    assert result.attempts == 2


async def test_a_retry_that_breaks_the_json_keeps_the_earlier_answer(build):
    fake = FakeGenerator(replies=[EMPTY_REVIEW, "{broken", "{broken again"])
    runner = build(fake, quality_max_retries=2)
    result = await runner.run(EDITOR, review_request())
    # attempt 1 parsed but said nothing; 2 broke the JSON, 3 was its repair and broke it too
    assert len(fake.calls) == 3 and result.attempts == 3
    assert result.output == EditorReview.model_validate_json(EMPTY_REVIEW)
    assert result.problems


async def test_a_chat_answer_keeps_its_opening_and_loses_only_a_loop(build):
    chat = REGISTRY["llm-chat"]
    request = LlmChatRequest.model_validate(
        {**seed_example(), "messages": [{"role": "user", "content": "Who is Aria?"}]})
    opening = "Sure! Aria is the hero who enters the forest."
    fake = FakeGenerator(replies=[opening + " the wolf howls." * 30])
    runner = build(fake, quality_max_retries=0)
    result = await runner.run(chat, request)
    assert result.text.startswith("Sure! Aria is the hero")
    assert result.text.count("the wolf howls.") == 1
    assert result.repairs and "loop" in result.repairs[0]
