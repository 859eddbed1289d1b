import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.agents.registry import REGISTRY
from app.config import Settings
from app.context.assembly import AgentTask, assemble
from app.context.elements import ContextElement, Layer, flatten
from app.context.report import Fate
from app.errors import ContextLengthExceeded
from app.llm.fake import FakeGenerator
from app.schemas.context import Priority, StructuredContext

FAKE = FakeGenerator()


def task(agent="writer", text="Write the next chapter.", **kw):
    return AgentTask(agent=agent, role=f"You are the {agent}.", task=text, **kw)


def sentences(n: int, word: str = "word") -> str:
    return " ".join(f"The {word} number {i} was here." for i in range(n))


def run(context: StructuredContext, *, window=8192, max_tokens=256, agent_task=None,
        completion_reserve=None, extra=()):
    """Assemble; the completion reserve defaults to ``max_tokens`` (the request's own)."""
    return assemble([*flatten(context), *extra], agent_task or task(), counter=FAKE,
                    context=Settings().context, distillation=Settings().distillation, n_ctx=window,
                    model="fake", max_tokens=max_tokens,
                    completion_reserve=completion_reserve or max_tokens)


def by_id(report):
    return {e.id: e for e in report.elements}


def test_everything_fits_and_is_reported_kept():
    context = StructuredContext.model_validate({
        "plot_elements": [{"type": "scene", "content": "Hero enters forest", "priority": "high"}],
        "character_contexts": [{"character_id": "hero", "character_name": "Aria"}],
        "chapters": [{"number": 1, "title": "Start", "content": "It began."}],
    })
    result = run(context)
    report = result.report
    assert [e.fate for e in report.elements] == [Fate.kept] * 3
    assert report.prompt_tokens == FAKE.count_prompt_tokens(result.messages)
    system = result.messages[0].content
    assert "Hero enters forest" in system and "### Chapter 1: Start" in system


def test_lowest_priority_goes_first_and_high_is_never_touched():
    context = StructuredContext.model_validate({"plot_elements": [
        {"type": "world", "content": sentences(200, "high"), "priority": "high"},
        {"type": "world", "content": sentences(200, "medium"), "priority": "medium"},
        {"type": "world", "content": sentences(200, "low"), "priority": "low"},
    ]})
    # window small enough that only part of the medium element fits after the high one
    result = run(context, window=3000, max_tokens=200)
    fates = {e.id: e.fate for e in result.report.elements}
    assert fates["plot_elements[0]"] is Fate.kept
    assert fates["plot_elements[2]"] is Fate.dropped
    assert fates["plot_elements[1]"] is Fate.trimmed
    medium = by_id(result.report)["plot_elements[1]"]
    assert 0 < medium.kept_tokens < medium.tokens
    assert medium.boundary in ("paragraph", "sentence")
    assert result.report.prompt_tokens + 200 <= 3000


def test_story_so_far_keeps_the_newest_text():
    chapters = [{"number": n, "content": sentences(150, f"ch{n}")} for n in (1, 2, 3, 4)]
    result = run(StructuredContext.model_validate({"chapters": chapters}), window=3000,
                 max_tokens=100)
    fates = by_id(result.report)
    assert fates["chapters[3]"].fate is Fate.kept
    assert fates["chapters[1]"].fate is Fate.trimmed
    assert fates["chapters[0]"].fate is Fate.dropped  # oldest goes first
    system = result.messages[0].content
    assert "The ch4 number 149 was here." in system  # the very end of the story is kept
    assert "The ch2 number 149 was here." in system  # the trimmed chapter keeps its end
    assert "The ch2 number 0 was here." not in system
    trimmed = [e for e in result.report.elements if e.fate is Fate.trimmed]
    assert all("kept its end" in e.reason for e in trimmed)


def test_high_priority_overflow_is_a_4xx_with_numbers():
    context = StructuredContext.model_validate({"plot_elements": [
        {"type": "world", "content": sentences(400), "priority": "high"}]})
    with pytest.raises(ContextLengthExceeded) as caught:
        run(context, window=1000, max_tokens=100)
    details = caught.value.details
    assert details["needed_tokens"] > details["available_tokens"] == 1000


def test_request_cap_is_respected():
    chapters = [{"number": 1, "content": sentences(500)}]
    result = assemble(flatten(StructuredContext.model_validate({"chapters": chapters})), task(),
                      counter=FAKE, context=Settings().context,
                      distillation=Settings().distillation, n_ctx=8192, model="fake",
                      max_tokens=300, completion_reserve=300, max_context_tokens=1500)
    assert result.report.window_tokens == 1500
    assert result.report.prompt_tokens + 300 <= 1500


def test_agents_on_the_same_story_share_the_system_message():
    context = StructuredContext.model_validate({
        "plot_elements": [{"type": "plot_point", "content": "The dragon wakes."}],
        "chapters": [{"number": n, "content": sentences(200, f"ch{n}")} for n in (1, 2, 3)],
    })
    # A window the story overflows: the trimming must not depend on the agent's max_tokens.
    writer = run(context, window=4000, agent_task=task("writer", "Write chapter 4."),
                 max_tokens=600, completion_reserve=600)
    rater = run(context, window=4000, agent_task=task("rater", "Rate it."), max_tokens=100,
                completion_reserve=600)
    assert writer.messages[0] == rater.messages[0]
    assert writer.messages[-1] != rater.messages[-1]
    assert writer.messages[-1].content.endswith("Write chapter 4.")
    assert any(e.fate is not Fate.kept for e in writer.report.elements)  # it did overflow
    for report in (writer.report, rater.report):
        assert report.shared_block_note is None
        assert report.completion_reserve_tokens == 600
        assert report.shared_prefix_tokens == FAKE.count_prefix_tokens(writer.messages, 1) > 0
    assert writer.report.shared_prefix_tokens == rater.report.shared_prefix_tokens


def test_a_request_needing_more_than_the_reserves_trims_further_and_says_so():
    context = StructuredContext.model_validate({
        "chapters": [{"number": n, "content": sentences(200, f"ch{n}")} for n in (1, 2, 3)]})
    standard = run(context, window=4000, max_tokens=100, completion_reserve=300)
    greedy = run(context, window=4000, max_tokens=900, completion_reserve=300)
    long_task = run(context, window=4000, max_tokens=100, completion_reserve=300,
                    agent_task=task(text=sentences(120)))
    assert standard.report.shared_block_note is None
    assert "above the completion reserve of 300" in greedy.report.shared_block_note
    assert "above the task reserve" in long_task.report.shared_block_note
    for smaller in (greedy, long_task):
        assert len(smaller.messages[0].content) < len(standard.messages[0].content)
        assert smaller.report.prompt_tokens + smaller.report.max_tokens <= 4000


def test_a_chapter_under_review_is_referred_to_where_it_stands():
    context = StructuredContext.model_validate({"chapters": [
        {"number": 1, "content": sentences(10, "one")},
        {"number": 2, "content": sentences(10, "two")}]})
    review = task("editor", "Review chapter 2 above.", reference="chapters[1]",
                  inline_task="Review the text below.\n\n" + sentences(10, "two"))
    result = run(context, agent_task=review)
    assert result.messages[-1].content.endswith("Review chapter 2 above.")
    assert sentences(10, "two") in result.messages[0].content  # left in the shared block
    assert by_id(result.report)["chapters[1]"].fate is Fate.kept
    plain = run(context, agent_task=task("writer", "Write chapter 3."))
    assert plain.messages[0] == result.messages[0]


def test_a_referenced_chapter_that_did_not_fit_whole_is_quoted_in_the_task_instead():
    context = StructuredContext.model_validate({"chapters": [
        {"number": 1, "content": sentences(300, "one")},
        {"number": 2, "content": sentences(300, "two")}]})
    review = task("editor", "Review chapter 1 above.", reference="chapters[0]",
                  inline_task="Review the text below.\n\n" + sentences(300, "one"))
    result = run(context, window=4000, max_tokens=100, agent_task=review)
    assert result.messages[-1].content.startswith("You are the editor.\n\nReview the text below")
    chapter = by_id(result.report)["chapters[0]"]
    assert chapter.fate is Fate.dropped and "quotes it in full" in chapter.reason
    assert "The one number 0" not in result.messages[0].content


def test_archive_passages_go_after_the_shared_block():
    context = StructuredContext.model_validate({"chapters": [{"number": 1, "content": "Once."}]})
    passage = ContextElement(id="archive[0]", kind="archive_passage", layer=Layer.plot_world,
                             priority=Priority.low, text="The archive remembers the dragon.",
                             label="archive passage", order=5, heading="From the archive:",
                             per_request=True)
    with_passage = run(context, extra=[passage])
    without = run(context)
    assert with_passage.messages[0] == without.messages[0]
    assert "The archive remembers the dragon." in with_passage.messages[-1].content
    assert by_id(with_passage.report)["archive[0]"].fate is Fate.kept


def test_registry_operations_all_have_an_agent_and_role():
    for spec in REGISTRY.values():
        assert spec.agent in {"writer", "editor", "character", "rater", "assistant", "archive"}
        assert spec.role
        # story agents share the team's preamble; the archivist's context is the archive
        assert (spec.preamble is None) == (spec.retrieval_query is None), spec.operation


priorities = st.sampled_from(list(Priority))
element_sets = st.lists(
    st.tuples(st.sampled_from([Layer.system, Layer.plot_world, Layer.characters]), priorities,
              st.integers(1, 120)),
    min_size=1, max_size=12,
)


@hsettings(max_examples=60, deadline=None)
@given(elements=element_sets, window=st.integers(700, 4000), max_tokens=st.integers(16, 300),
       reserve=st.integers(16, 600), chapter_sentences=st.lists(st.integers(1, 80), max_size=4))
def test_assembly_properties(elements, window, max_tokens, reserve, chapter_sentences):
    items = [
        ContextElement(id=f"e{i}", kind="plot_element", layer=layer, priority=priority,
                       text=sentences(n, f"w{i}"), label=f"e{i}", order=i)
        for i, (layer, priority, n) in enumerate(elements)
    ]
    items += [
        ContextElement(id=f"c{i}", kind="chapter", layer=Layer.recent_story,
                       priority=Priority.low, text=sentences(n, f"c{i}"), label=f"c{i}",
                       order=len(items) + i, keep_tail=True, heading=f"### Chapter {i + 1}")
        for i, n in enumerate(chapter_sentences)
    ]
    try:
        result = assemble(items, task(), counter=FAKE, context=Settings().context,
                          distillation=Settings().distillation, n_ctx=window,
                          model="fake", max_tokens=max_tokens, completion_reserve=reserve)
    except ContextLengthExceeded as error:
        high = sum(FAKE.count_tokens(e.render()) for e in items if e.priority is Priority.high)
        assert error.details["needed_tokens"] > error.details["available_tokens"] or high
        return
    report = result.report
    # the prompt always fits
    assert FAKE.count_prompt_tokens(result.messages) == report.prompt_tokens
    assert report.prompt_tokens + max_tokens <= window
    # every element is accounted for, once
    assert sorted(e.id for e in report.elements) == sorted(e.id for e in items)
    fates = {e.id: e for e in report.elements}
    for item in items:
        if item.priority is Priority.high:
            assert fates[item.id].fate is Fate.kept
    # lower priority is never kept whole while higher priority of the same layer is cut
    for a in items:
        for b in items:
            if (a.layer == b.layer and a.priority.value == "low" and b.priority.value != "low"
                    and fates[b.id].fate is not Fate.kept):
                assert fates[a.id].fate is Fate.dropped
    # deterministic, and the shared block does not depend on the agent's own max_tokens
    again = assemble(items, task(), counter=FAKE, context=Settings().context,
                     distillation=Settings().distillation, n_ctx=window,
                     model="fake", max_tokens=max_tokens, completion_reserve=reserve)
    assert again.messages == result.messages
    if report.shared_block_note is None and max_tokens > 16:
        other = assemble(items, task("rater", "Rate it."), counter=FAKE, context=Settings().context,
                         distillation=Settings().distillation,
                         n_ctx=window, model="fake", max_tokens=16, completion_reserve=reserve)
        assert other.messages[0] == result.messages[0]
