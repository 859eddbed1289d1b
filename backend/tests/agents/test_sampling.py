"""What each operation generates with: the agents' defaults (the original Writer Assistant's
table), ENDPOINT_* overrides, scaling to a small window (and the report's note), the shared
block's completion reserve, and target_words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from app.agents.registry import REGISTRY, default_completion_reserve
from app.agents.runner import AgentRunner
from app.agents.sampling import WORDS_PER_TOKEN, tokens_for_words
from app.bootstrap import build_runner, close_runner
from app.config import OPERATIONS, Settings, endpoint_prefix
from app.context import summaries
from app.llm.fake import FakeGenerator
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.schemas.requests import (
    FleshOutRequest,
    GenerateChapterRequest,
    ModifyChapterRequest,
    TargetWordsRequest,
)
from tests.agents.test_runner import REQUESTS
from tests.conftest import seed_example

#: Operation -> (temperature, max_tokens) for a request with default fields; None: the
#: server's LLM_TEMPERATURE / LLM_MAX_TOKENS. Writer, editor, character and rater follow the
#: original Writer Assistant's table (writer 0.8 / 2000, editor 0.6 / 800, character 0.8 / 800,
#: rater 0.7 / 600).
DEFAULTS: dict[str, tuple[float | None, int | None]] = {
    "generate-chapter": (0.8, 2000),
    "modify-chapter": (0.8, 2000),
    "flesh-out": (0.8, 2000),
    "generate-chapter-outlines": (0.6, 80 + 220 * 3),
    "editor-review": (0.6, 800),
    "character-feedback": (0.8, 800),
    "generate-character-details": (0.8, 800),
    "regenerate-bio": (0.8, 800),
    "rater-feedback": (0.7, 600),
    "llm-chat": (None, None),
    "rag-query": (0.2, None),
    "rag-chat": (0.2, None),
}
CHAPTER_OPERATIONS = ("generate-chapter", "modify-chapter", "flesh-out")


@pytest.fixture
def build(tmp_path: Path) -> Iterator:
    """``build(generator, **settings)``: a runner as the app builds it; closed after."""
    runners: list[AgentRunner] = []

    def make(generator: FakeGenerator | None = None, **overrides: object) -> AgentRunner:
        settings = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False,
                            **overrides)
        runner = build_runner(settings, generator or FakeGenerator(), Scheduler(8, 60),
                              Metrics())
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        close_runner(runner)


def request(operation: str, **fields: object) -> BaseModel:
    """The minimal request of ``operation`` with ``fields`` set."""
    base = REQUESTS[operation]
    return type(base).model_validate({**base.model_dump(exclude_unset=True), **fields})


def test_the_operations_of_the_settings_are_the_registrys():
    assert list(OPERATIONS) == list(REGISTRY)


def test_the_defaults_table():
    assert set(DEFAULTS) == set(REGISTRY)
    for operation, (temperature, max_tokens) in DEFAULTS.items():
        spec = REGISTRY[operation]
        assert (spec.temperature, spec.max_tokens) == (temperature, max_tokens), operation
        # an agent's own limit never refuses its own default
        assert spec.max_tokens_limit is None or spec.max_tokens_limit >= (max_tokens or 0)


@pytest.mark.parametrize("operation", sorted(REGISTRY))
def test_the_defaults_reach_the_sampling(build, operation):
    runner = build(llm_max_tokens=333, llm_temperature=0.9)
    temperature, max_tokens = DEFAULTS[operation]

    params = runner.sampling(REGISTRY[operation], REQUESTS[operation])

    assert params.temperature == (0.9 if temperature is None else temperature)
    assert params.max_tokens == (333 if max_tokens is None else max_tokens)


def test_the_defaults_are_documented():
    text = (Path(__file__).resolve().parents[3] / "CONFIGURATION.md").read_text()
    for pair in ("0.8 / 2000", "0.6 / 800", "0.8 / 800", "0.7 / 600"):
        assert pair in text


# --- ENDPOINT_* ---------------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(REGISTRY))
def test_endpoint_settings_override_the_agents_defaults(build, operation):
    prefix = endpoint_prefix(operation).lower()
    runner = build(**{f"{prefix}_max_tokens": 123, f"{prefix}_temperature": 1.1})
    spec = REGISTRY[operation]

    params = runner.sampling(spec, REQUESTS[operation])
    assert (params.max_tokens, params.temperature) == (123, 1.1)

    # the request's own values still win
    own = runner.sampling(spec, request(operation, max_tokens=45, temperature=0.0))
    assert (own.max_tokens, own.temperature) == (45, 0.0)
    # other operations keep their defaults
    other = next(o for o in REGISTRY if o != operation)
    assert runner.sampling(REGISTRY[other], REQUESTS[other]).max_tokens != 123


def test_endpoint_max_tokens_are_not_scaled_but_capped_at_the_agents_limit(build):
    runner = build(FakeGenerator(context_window=4096), endpoint_generate_chapter_max_tokens=3000,
                   endpoint_editor_review_max_tokens=3000)
    chapter = runner._sampling_plan(REGISTRY["generate-chapter"], REQUESTS["generate-chapter"])
    assert chapter.params.max_tokens == 3000 and chapter.max_tokens_note is None
    review = runner._sampling_plan(REGISTRY["editor-review"], REQUESTS["editor-review"])
    assert review.params.max_tokens == 2048  # the editor's own limit
    assert "ENDPOINT_EDITOR_REVIEW_MAX_TOKENS" in review.max_tokens_note
    assert "capped at the limit of 2048" in review.max_tokens_note


# --- scaling to the window ----------------------------------------------------------------


@pytest.mark.parametrize(("n_ctx", "writer"), [(8192, 2000), (4096, 1024), (2048, 512)])
def test_the_writers_default_takes_at_most_a_quarter_of_the_window(build, n_ctx, writer):
    runner = build(FakeGenerator(context_window=n_ctx))
    plan = runner._sampling_plan(REGISTRY["generate-chapter"], REQUESTS["generate-chapter"])
    assert plan.params.max_tokens == writer
    if writer == 2000:
        assert plan.max_tokens_note is None
    else:
        assert plan.max_tokens_note == (
            f"max_tokens 2000 (the writer agent's default) was lowered to {writer}: scaled to a "
            f"quarter of this request's {n_ctx}-token window, to leave room for the prompt (a "
            "request's own max_tokens is not scaled).")


def test_the_requests_window_cap_scales_too(build):
    runner = build()
    capped = request("generate-chapter",
                     context_processing_config={"max_context_tokens": 3000})
    assert runner.sampling(REGISTRY["generate-chapter"], capped).max_tokens == 750


def test_json_agents_and_configured_values_are_not_scaled(build):
    runner = build(FakeGenerator(context_window=2048), llm_max_tokens=700)
    for operation in ("editor-review", "character-feedback", "rater-feedback", "llm-chat"):
        plan = runner._sampling_plan(REGISTRY[operation], REQUESTS[operation])
        assert plan.params.max_tokens == (DEFAULTS[operation][1] or 700), operation
        assert plan.max_tokens_note is None, operation
    # a request's own max_tokens is taken as asked
    own = runner.sampling(REGISTRY["generate-chapter"], request("generate-chapter",
                                                                max_tokens=900))
    assert own.max_tokens == 900


async def test_the_report_says_when_max_tokens_was_scaled(build):
    fake = FakeGenerator(context_window=4096)
    runner = build(fake)

    result = await runner.run(REGISTRY["generate-chapter"], REQUESTS["generate-chapter"])
    report = result.report
    assert report.max_tokens == 1024 == fake.calls[-1][1].max_tokens
    assert report.max_tokens_note and "scaled to a quarter" in report.max_tokens_note
    assert report.shared_block_note is None  # the reserve followed the scaled default

    stream = await runner.stream(REGISTRY["flesh-out"], REQUESTS["flesh-out"])
    items = [item async for item in stream]
    meta = next(item for item in items if type(item).__name__ == "Meta")
    assert "scaled to a quarter" in meta.report.max_tokens_note

    preview = await runner.preview(REGISTRY["modify-chapter"], REQUESTS["modify-chapter"])
    assert "scaled to a quarter" in preview.prompt.report.max_tokens_note


async def test_no_note_at_the_default_window(build):
    runner = build()
    result = await runner.run(REGISTRY["generate-chapter"], REQUESTS["generate-chapter"])
    assert result.report.max_tokens == 2000 and result.report.max_tokens_note is None


def test_a_default_above_the_server_limit_is_capped_and_noted(build):
    runner = build(llm_max_tokens_limit=1000)
    plan = runner._sampling_plan(REGISTRY["generate-chapter"], REQUESTS["generate-chapter"])
    assert plan.params.max_tokens == 1000
    assert "capped at the limit of 1000 for generate-chapter" in plan.max_tokens_note


# --- the shared block's completion reserve ------------------------------------------------


def reserve(n_ctx: int = 8192, **overrides: object) -> int:
    settings = Settings(**overrides)
    return default_completion_reserve(settings.context, settings.model.sampling,
                                      settings.endpoints, n_ctx)


def test_the_completion_reserve_follows_the_largest_scaled_default():
    assert reserve() == 2000  # the writer's
    assert reserve(4096) == 1024  # the writer's, scaled
    assert reserve(2048) == 800  # the editor's and the character's (JSON: not scaled)
    assert reserve(endpoint_generate_chapter_max_tokens=3000) == 3000
    assert reserve(endpoint_generate_chapter_max_tokens=100,
                   endpoint_modify_chapter_max_tokens=100,
                   endpoint_flesh_out_max_tokens=100) == 800
    assert reserve(context_completion_reserve_tokens=740) == 740


def test_the_runner_plans_the_shared_block_against_it(build):
    assert build().completion_reserve == 2000
    assert build(FakeGenerator(context_window=4096)).completion_reserve == 1024


# --- target_words -------------------------------------------------------------------------


def test_words_per_token_is_the_summaries_figure():
    assert WORDS_PER_TOKEN == summaries._WORDS_PER_TOKEN


@pytest.mark.parametrize(("words", "tokens"), [(50, 80), (300, 480), (1000, 1600),
                                               (1250, 2000)])
def test_tokens_for_words(words, tokens):
    assert tokens_for_words(words) == tokens


@pytest.mark.parametrize("operation", CHAPTER_OPERATIONS)
def test_target_words_sets_max_tokens_and_the_task(build, operation):
    runner = build(endpoint_generate_chapter_max_tokens=300)
    spec = REGISTRY[operation]
    asked = request(operation, target_words=600)

    assert isinstance(asked, TargetWordsRequest)
    assert runner.sampling(spec, asked).max_tokens == 960  # over ENDPOINT_* too
    assert "about 600 words" in spec.build_task(asked).text
    assert "words" not in spec.build_task(REQUESTS[operation]).text.split("Sketch:")[0]
    # the request's own max_tokens wins
    assert runner.sampling(spec, request(operation, target_words=600,
                                         max_tokens=100)).max_tokens == 100


def test_target_words_stay_within_the_window_and_the_limit(build):
    spec = REGISTRY["generate-chapter"]
    plan = build()._sampling_plan(spec, request("generate-chapter", target_words=2000))
    assert plan.params.max_tokens == 2048  # a quarter of 8192, not 3200
    assert "3200 (for target_words 2000)" in plan.max_tokens_note
    limited = build(FakeGenerator(context_window=32768), llm_max_tokens_limit=3000)
    plan = limited._sampling_plan(spec, request("generate-chapter", target_words=5000))
    assert plan.params.max_tokens == 3000
    assert "capped at the limit of 3000" in plan.max_tokens_note


@pytest.mark.parametrize("model", [GenerateChapterRequest, ModifyChapterRequest,
                                   FleshOutRequest])
def test_target_words_are_bounded(model):
    body = {**seed_example(), "current_chapter": "Old.", "user_request": "Darker.",
            "text_to_flesh_out": "Run."}
    if model is not ModifyChapterRequest:
        body = {k: v for k, v in body.items() if k not in ("current_chapter", "user_request")}
    if model is not FleshOutRequest:
        body.pop("text_to_flesh_out")
    for words in (49, 5001):
        with pytest.raises(ValidationError, match="target_words"):
            model.model_validate({**body, "target_words": words})
    assert model.model_validate({**body, "target_words": 50}).target_words == 50


def test_only_the_chapter_operations_take_target_words():
    for operation, spec in REGISTRY.items():
        takes = "target_words" in spec.request_model.model_fields
        assert takes == (operation in CHAPTER_OPERATIONS), operation


def test_target_words_over_http(client):
    body = {**seed_example(), "target_words": 300}
    answer = client.post("/api/v1/generate-chapter", json=body)
    assert answer.status_code == 200, answer.text
    report = answer.json()["context_metadata"]
    assert report["max_tokens"] == 480 and report["max_tokens_note"] is None

    refused = client.post("/api/v1/flesh-out", json={**seed_example(), "text_to_flesh_out": "Run.",
                                                      "target_words": 10})
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "target_words"
    assert client.post("/api/v1/editor-review", json={
        **seed_example(), "chapter_to_review": "Text.", "target_words": 300}).status_code == 422
