"""Distillation with a scripted model: summaries replace dropping, are cached and reported."""

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from app.agents.registry import REGISTRY
from app.agents.runner import AgentRunner, Meta, Progress
from app.bootstrap import build_runner, close_runner
from app.config import Settings
from app.context.assembly import AgentTask, assemble
from app.context.distill import Strategy, SummaryJob, strategy_for
from app.context.elements import ContextElement, Layer
from app.context.report import Fate
from app.context.summaries import SUMMARIZER_ROLE, Distiller, SummaryCache
from app.llm.fake import FakeGenerator
from app.llm.scheduler import Scheduler
from app.main import create_app
from app.observability.metrics import Metrics
from app.schemas.context import Priority
from app.schemas.requests import GenerateChapterRequest

FAKE = FakeGenerator()


def summarizer(messages, params):
    """Summaries are the first words of the text; agent calls answer a fixed line."""
    if messages[0].content.startswith(SUMMARIZER_ROLE):
        text = messages[-1].content.split("Text:\n", 1)[1]
        return " ".join(text.split()[: int(params.max_tokens * 0.5)]) + "."
    return "The next chapter begins."


def story(chapters: int, sentences: int) -> dict:
    return {"structured_context": {
        "plot_elements": [{"type": "plot_point", "content": "The queen calls a trial.",
                           "priority": "high"}],
        "chapters": [
            {"number": n, "title": f"Part {n}",
             "content": "\n\n".join(f"In chapter {n} event {i} happened to Alice."
                                    for i in range(sentences))}
            for n in range(1, chapters + 1)
        ]},
        "max_tokens": 200}


def make_runner(settings: Settings) -> AgentRunner:
    """A runner on a fresh fake model over the summary cache in ``SUMMARY_CACHE_DIR``."""
    generator = FakeGenerator(replies=[summarizer], context_window=4096)
    return build_runner(settings, generator, Scheduler(8, 60), Metrics())


@pytest.fixture
def runner(tmp_path):
    runner = make_runner(Settings(summary_cache_dir=tmp_path / "cache"))
    yield runner
    close_runner(runner)


async def test_older_chapters_are_distilled_newest_kept_and_cached(runner):
    request = GenerateChapterRequest.model_validate(story(chapters=6, sentences=60))
    spec = REGISTRY["generate-chapter"]
    first = await runner.preview(spec, request)
    report = first.prompt.report
    assert report.prompt_tokens + 200 <= 4096
    fates = {e.id: e for e in report.elements}
    assert fates["chapters[5]"].fate is Fate.kept  # the newest text stays verbatim
    distilled = [e for e in report.elements if e.fate is Fate.distilled]
    assert {e.id for e in distilled} >= {"chapters[0]", "chapters[1]", "chapters[2]"}
    summary_ids = {s.id for s in report.summaries}
    assert all(e.distilled_into in summary_ids for e in distilled)
    assert not [e for e in report.elements if e.fate is Fate.dropped]
    # provenance: every distilled chapter's text is covered by a summary's sources
    sources = {src.element_id for s in report.summaries for src in s.sources}
    assert {e.id for e in distilled} <= sources
    assert report.distillation.llm_calls > 0
    system = first.prompt.messages[0].content
    assert "### Summary of chapter" in system
    assert system.index("### Summary of chapter") < system.index("### Chapter 6: Part 6")

    calls = len(runner.generator.calls)
    again = await runner.preview(spec, request)
    assert len(runner.generator.calls) == calls  # served from the summary cache
    assert again.prompt.report.distillation.llm_calls == 0
    made = [s for s in report.summaries if s.strategy != "excerpt"]  # excerpts are no summary
    assert again.prompt.report.distillation.cache_hits == len(made)
    assert again.prompt.messages == first.prompt.messages


async def test_cache_survives_a_restart(runner, tmp_path):
    request = GenerateChapterRequest.model_validate(story(chapters=5, sentences=60))
    spec = REGISTRY["generate-chapter"]
    await runner.preview(spec, request)
    fresh = make_runner(Settings(summary_cache_dir=tmp_path / "cache"))
    prepared = await fresh.preview(spec, request)
    assert fresh.generator.calls == []
    assert prepared.prompt.report.distillation.llm_calls == 0


async def test_summaries_of_summaries_when_chapter_summaries_do_not_fit(runner):
    request = GenerateChapterRequest.model_validate(story(chapters=30, sentences=25))
    prepared = await runner.preview(REGISTRY["generate-chapter"], request)
    report = prepared.prompt.report
    assert max(s.level for s in report.summaries) >= 2
    top = [s for s in report.summaries if s.level >= 2]
    assert all(s.inputs for s in top)
    assert report.prompt_tokens + 200 <= 4096
    assert all(e.fate in (Fate.kept, Fate.distilled, Fate.trimmed) for e in report.elements)


async def test_world_elements_are_distilled_not_dropped(runner):
    body = {"structured_context": {"plot_elements": [
        {"type": "world", "content": f"Rule {i}: " + "magic costs memory. " * 120,
         "priority": "low" if i else "high"} for i in range(12)]}, "max_tokens": 200}
    prepared = await runner.preview(REGISTRY["generate-chapter"],
                                    GenerateChapterRequest.model_validate(body))
    fates = {e.id: e for e in prepared.prompt.report.elements}
    assert fates["plot_elements[0]"].fate is Fate.kept  # high priority stays whole
    assert any(e.fate is Fate.distilled for e in fates.values())
    assert all(e.fate is not Fate.dropped for e in fates.values())
    summary = prepared.prompt.report.summaries[0]
    assert summary.strategy == "world" and summary.layer == Layer.plot_world


async def test_stream_reports_progress_before_meta(runner):
    request = GenerateChapterRequest.model_validate(story(chapters=6, sentences=60))
    items = [item async for item in await runner.stream(REGISTRY["generate-chapter"], request)]
    kinds = [type(item).__name__ for item in items]
    first_meta = kinds.index("Meta")
    assert kinds[:first_meta] and set(kinds[:first_meta]) == {"Progress"}
    assert isinstance(items[0], Progress) and items[0].data["stage"] == "distilling"
    assert isinstance(items[first_meta], Meta)


async def test_long_input_is_split_so_no_summary_prompt_exceeds_the_window(tmp_path):
    settings = Settings(summary_cache_dir=tmp_path)
    generator = FakeGenerator(replies=[summarizer], context_window=600)
    distiller = Distiller(generator, SummaryCache(tmp_path, 2**24, "fake"), settings.distillation,
                          settings.model.sampling)
    text = "\n\n".join(f"Paragraph {i} tells of the hatter and the hare at tea."
                       for i in range(200))
    job = SummaryJob(Layer.recent_story, Strategy.plot, 1, text, 100, (), "x")
    from app.context.summaries import DistillStats
    stats = DistillStats()
    summary = await distiller.make(job, stats, tenant="local")  # the fake raises on overflow
    assert FAKE.count_tokens(summary) <= 100
    assert stats.llm_calls > 1


ALICE_KEY, BOB_KEY = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
PREVIEW = {"operation": "generate-chapter", "request": story(chapters=6, sentences=60)}


def distillation_of(client: TestClient, key: str | None = None) -> dict:
    """The distillation figures of a /context/preview of PREVIEW (served: 200)."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    response = client.post("/api/v1/context/preview", json=PREVIEW, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["context_metadata"]["distillation"]


def test_the_summary_cache_is_per_tenant(settings):
    """Bob's first distillation of the chapters Alice sent is no cache hit (he cannot learn
    that she sent them); Alice's second is."""
    keyed = settings.replace(api_keys=SecretStr(f"alice:{ALICE_KEY},bob:{BOB_KEY}"))
    app = create_app(keyed, generator=FakeGenerator(replies=[summarizer], context_window=4096))
    with TestClient(app) as client:
        alice = distillation_of(client, ALICE_KEY)
        assert alice["llm_calls"] > 0 and alice["cache_hits"] == 0
        again = distillation_of(client, ALICE_KEY)
        assert again["llm_calls"] == 0 and again["cache_hits"] > 0
        bob = distillation_of(client, BOB_KEY)
        assert bob["cache_hits"] == 0 and bob["llm_calls"] == alice["llm_calls"]


def overwrite_with_junk(directory: Path) -> None:
    """Junk over the summary cache's SQLite database, its write-ahead log and its index, in
    place (the same length: the index is mapped by the open connections, and cutting a mapped
    file short would crash them)."""
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        path = directory / name
        if path.exists():
            with path.open("r+b") as handle:
                handle.write(b"junk" * (path.stat().st_size // 4))


def test_a_summary_cache_found_corrupt_while_serving_is_skipped_and_rebuilt(settings, caplog):
    cache_dir = settings.distillation.cache_dir
    app = create_app(settings, generator=FakeGenerator(replies=[summarizer], context_window=4096))
    with TestClient(app) as client:
        made = distillation_of(client)["llm_calls"]
        assert made > 0 and distillation_of(client)["cache_hits"] > 0
        overwrite_with_junk(cache_dir)
        with caplog.at_level(logging.ERROR, logger="app.context.summaries"):
            skipped = distillation_of(client)  # served, the cache skipped
        assert skipped["llm_calls"] == made and skipped["cache_hits"] == 0
        rebuilt = distillation_of(client)  # the rebuilt cache holds the new summaries
        assert rebuilt["llm_calls"] == 0 and rebuilt["cache_hits"] > 0
        metrics = client.get("/metrics").text
    assert "summary cache" in caplog.text and "rebuilt" in caplog.text
    assert 'writer_assistant_summary_cache_errors_total{operation="get"} 1.0' in metrics
    assert (cache_dir / "cache.db.corrupt").read_bytes().startswith(b"junk")


def test_a_summary_cache_corrupt_at_startup_is_moved_aside_and_rebuilt(settings, caplog):
    cache_dir = settings.distillation.cache_dir
    cache_dir.mkdir(parents=True)
    (cache_dir / "cache.db").write_bytes(b"junk" * 4096)  # no SQLite database
    with caplog.at_level(logging.ERROR, logger="app.context.summaries"):
        app = create_app(settings, generator=FakeGenerator(replies=[summarizer],
                                                           context_window=4096))
    with TestClient(app) as client:
        assert distillation_of(client)["llm_calls"] > 0
        assert distillation_of(client)["cache_hits"] > 0
        metrics = client.get("/metrics").text
    assert "summary cache" in caplog.text
    assert 'writer_assistant_summary_cache_errors_total{operation="open"} 1.0' in metrics
    assert (cache_dir / "cache.db.corrupt").read_bytes().startswith(b"junk")


def test_strategies_follow_content_type():
    def element(content_type, text="x"):
        return ContextElement(id="e", kind="k", layer=Layer.plot_world, priority=Priority.low,
                              text=text, label="e", order=0, content_type=content_type)
    assert strategy_for(element("character")) is Strategy.character
    assert strategy_for(element("scene")) is Strategy.scene
    assert strategy_for(element("conflict")) is Strategy.plot
    assert strategy_for(element("feedback")) is Strategy.feedback
    assert strategy_for(element("world")) is Strategy.world
    assert strategy_for(element("chapter", '"Hello there," she said. "Who are you?"')) is \
        Strategy.dialogue
    assert strategy_for(element("chapter", "She walked for a long time.")) is Strategy.plot


class DictLookup:
    """Summaries made on demand by taking the first words (a deterministic fake model)."""

    def __init__(self):
        self.made = {}

    def get(self, job):
        return self.made.get(job.digest)

    def make(self, job):
        words = job.text.split()[: max(1, int(job.target_tokens * 0.6))]
        self.made[job.digest] = " ".join(words)


def assemble_fully(items, window, max_tokens, lookup):
    task = AgentTask(agent="writer", role="You are the writer.", task="Write on.")
    for _ in range(8):
        result = assemble(items, task, counter=FAKE, context=Settings().context,
                          distillation=Settings().distillation, n_ctx=window,
                          model="fake", max_tokens=max_tokens, completion_reserve=max_tokens,
                          summaries=lookup)
        if not result.missing:
            return result
        for job in result.missing:
            lookup.make(job)
    raise AssertionError("did not converge")


def words(n, tag):
    return " ".join(f"The {tag} moved {i}." for i in range(n))


element_sets = st.lists(
    st.tuples(st.sampled_from([Layer.system, Layer.plot_world, Layer.characters]),
              st.sampled_from(list(Priority)), st.integers(1, 150),
              st.sampled_from(["world", "scene", "character", "conflict"])),
    min_size=1, max_size=10)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(elements=element_sets, window=st.integers(900, 5000), max_tokens=st.integers(16, 300),
       chapters=st.lists(st.integers(1, 120), max_size=6))
def test_distillation_properties(elements, window, max_tokens, chapters):
    from app.errors import ContextLengthExceeded

    items = [ContextElement(id=f"e{i}", kind="plot_element", layer=layer, priority=priority,
                            text=words(n, f"w{i}"), label=f"e{i}", order=i, content_type=kind)
             for i, (layer, priority, n, kind) in enumerate(elements)]
    items += [ContextElement(id=f"c{i}", kind="chapter", layer=Layer.recent_story,
                             priority=Priority.medium if i == len(chapters) - 1 else Priority.low,
                             text=words(n, f"c{i}"), label=f"c{i}", order=len(items) + i,
                             keep_tail=True, heading=f"### Chapter {i + 1}",
                             content_type="chapter", source={"chapter": i + 1})
              for i, n in enumerate(chapters)]
    lookup = DictLookup()
    try:
        result = assemble_fully(items, window, max_tokens, lookup)
    except ContextLengthExceeded:
        high = [e for e in items if e.priority is Priority.high]
        assert high  # only high-priority content can make a request impossible
        return
    report = result.report
    assert FAKE.count_prompt_tokens(result.messages) == report.prompt_tokens
    assert report.prompt_tokens + max_tokens <= window
    assert sorted(e.id for e in report.elements) == sorted(e.id for e in items)
    fates = {e.id: e for e in report.elements}
    for item in items:
        if item.priority is Priority.high:
            assert fates[item.id].fate is Fate.kept
        if fates[item.id].fate is Fate.distilled:
            assert fates[item.id].distilled_into in {s.id for s in report.summaries}
    rank = {Priority.high: 0, Priority.medium: 1, Priority.low: 2}
    for a in items:
        for b in items:
            if (a.layer == b.layer and rank[a.priority] > rank[b.priority]
                    and fates[b.id].fate is not Fate.kept):  # higher priority gave way...
                assert fates[a.id].fate is not Fate.kept  # ...so the lower did too
    again = assemble_fully(items, window, max_tokens, lookup)
    assert again.messages == result.messages
