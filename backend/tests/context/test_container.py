"""The story container: the original Writer Assistant's StructuredContextContainer accepted
as a subset of ours, its fields used, and the filters by tag, agent, phase and character scope
(decided before budgeting and reported)."""

import json

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.context.assembly import SCOPED_TITLE, AgentTask, assemble
from app.context.distill import Strategy, strategy_for
from app.context.elements import Audience, Layer, flatten
from app.context.report import Fate
from app.llm.fake import FakeGenerator
from app.schemas.context import (
    MAX_OBJECT_CHARS,
    ContextProcessingConfig,
    InstructionScope,
    Phase,
    PlotElementType,
    StructuredContext,
)
from app.schemas.requests import GenerateChapterRequest

FAKE = FakeGenerator()

#: Every field of the original's StructuredContextContainer, in its shapes.
ORIGINAL = {
    "plot_elements": [
        {"id": "p1", "type": "setup", "content": "Aria left the village at dawn.",
         "priority": "high", "tags": ["backstory"], "metadata": {"source": "outline v2"}},
        {"type": "twist", "content": "The mentor is the thief.", "priority": "medium",
         "tags": ["spoiler"], "metadata": {}},
        {"type": "payoff", "content": "The locket opens.", "tags": []},
        {"type": "resolution", "content": "The village is saved."},
        {"type": "transition", "content": "Night falls."},
        {"type": "chapter_outline", "content": "1. Dawn. 2. Forest. 3. Ruin."},
        {"type": "climax", "content": "The duel on the bridge."},
        {"type": "subplot", "content": "Bran's debt."},
        {"type": "scene", "content": "Hero enters forest", "priority": "high",
         "tags": ["current_scene"]},
    ],
    "character_contexts": [
        {"character_id": "hero", "character_name": "Aria",
         "current_state": {"emotion": "determined", "location": "forest_edge"},
         "recent_actions": ["Drew sword"], "relationships": {"Bran": "wary"},
         "goals": ["Find the artifact", "Save the kingdom"],
         "memories": ["Training with Master Orin"],
         "personality_traits": ["brave", "stubborn"], "tags": ["main"],
         "metadata": {"arc": "hero"}},
        {"character_id": "bran", "character_name": "Bran", "current_state": "nervous"},
    ],
    "user_requests": [
        {"id": "u1", "type": "style_change", "content": "Make the dialogue less formal",
         "priority": "high", "target": "dialogue",
         "context": "They are old friends", "timestamp": "2025-01-15T10:30:00Z",
         "tags": ["style"], "metadata": {"by": "author"}},
        {"type": "tone_adjustment", "content": "Darker."},
    ],
    "system_instructions": [
        {"id": "s1", "type": "behavior", "content": "Keep voices consistent.",
         "scope": "global", "priority": "high", "conditions": {}, "metadata": {}},
        {"type": "style", "content": "Speak in short, clipped sentences.",
         "scope": "character", "character": "Aria", "priority": "high"},
        {"type": "constraint", "content": "No modern slang.", "scope": "story"},
        {"type": "rule", "content": "Use vivid imagery.", "scope": "scene",
         "conditions": {"time_of_day": "night"}},
    ],
    "metadata": {"title": "The Locket", "genre": "fantasy"},
}


def context(data=None) -> StructuredContext:
    return StructuredContext.model_validate(json.loads(json.dumps(data or ORIGINAL)))


def task(agent="writer", text="Write the next chapter."):
    return AgentTask(agent=agent, role=f"You are the {agent}.", task=text)


def run(story, audience=None, *, agent="writer", window=8192, max_tokens=256):
    return assemble(flatten(story, audience), task(agent), counter=FAKE,
                    context=Settings().context, distillation=Settings().distillation,
                    n_ctx=window, model="fake", max_tokens=max_tokens,
                    completion_reserve=max_tokens)


def by_id(report):
    return {e.id: e for e in report.elements}


def writer(**config):
    return Audience.of("writer", "generate-chapter", ContextProcessingConfig(**config))


# --- what is accepted --------------------------------------------------------------------

def test_the_original_container_is_accepted_with_every_field():
    story = context()
    assert [p.type for p in story.plot_elements][:3] == ["setup", "twist", "payoff"]
    aria = story.character_contexts[0]
    assert aria.current_state == {"emotion": "determined", "location": "forest_edge"}
    assert aria.goals == ["Find the artifact", "Save the kingdom"]
    assert aria.memories == ["Training with Master Orin"]
    assert aria.personality_traits == ["brave", "stubborn"]
    request = story.user_requests[0]
    assert request.target == "dialogue" and request.timestamp.year == 2025
    assert story.system_instructions[1].scope is InstructionScope.character
    assert story.system_instructions[3].conditions == {"time_of_day": "night"}
    assert story.plot_elements[0].metadata == {"source": "outline v2"}


@pytest.mark.parametrize("kind", [t.value for t in PlotElementType])
def test_every_documented_plot_type_is_accepted(kind):
    story = context({"plot_elements": [{"type": kind, "content": "x"}]})
    element = flatten(story)[0]
    assert element.layer is (Layer.characters if kind in ("scene", "setting")
                             else Layer.plot_world)
    assert element.note == ""


def test_any_lowercase_slug_is_a_plot_type_and_the_report_says_where_it_went():
    story = context({"plot_elements": [{"type": "red_herring", "content": "A false clue."}]})
    element = flatten(story)[0]
    assert element.layer is Layer.plot_world
    report = run(story).report
    reason = by_id(report)["plot_elements[0]"].reason
    assert "'red_herring' is not a documented plot element type" in reason
    assert "plot_world layer" in reason
    assert "- Red herring: A false clue." in run(story).messages[0].content


@pytest.mark.parametrize("kind", ["Twist", "plot point", "", "x" * 41, "9lives"])
def test_a_plot_type_that_is_no_lowercase_slug_is_refused(kind):
    with pytest.raises(ValidationError) as error:
        context({"plot_elements": [{"type": kind, "content": "x"}]})
    assert error.value.errors()[0]["loc"] == ("plot_elements", 0, "type")


def test_the_original_types_are_distilled_as_plot():
    story = context()
    strategies = {e.content_type: strategy_for(e) for e in flatten(story)}
    for kind in ("setup", "twist", "payoff", "resolution", "climax", "subplot",
                 "chapter_outline", "transition"):
        assert strategies[kind] is Strategy.plot


def test_the_new_fields_are_rendered_readably():
    system = run(context()).messages[0].content
    assert ("Current state: emotion: determined; location: forest_edge\n"
            "Goals: Find the artifact; Save the kingdom\n"
            "Personality traits: brave, stubborn\n"
            "Recent actions: Drew sword\n"
            "Memories: Training with Master Orin\n"
            "Relationships: Bran: wary") in system
    assert ("- Request (style_change, target: dialogue): Make the dialogue less formal "
            "(context: They are old friends)") in system
    assert "- Use vivid imagery. (when time of day: night)" in system
    assert "outline v2" not in system  # metadata is the caller's, not the model's
    assert "2025" not in system


def test_tags_and_metadata_are_on_every_element_and_bounded():
    story = context({"chapters": [{"number": 1, "content": "Once.", "tags": ["draft"],
                                   "metadata": {"words": 1}}]})
    assert story.chapters[0].tags == ["draft"]
    assert run(story).report.elements[0].tags == ["draft"]
    with pytest.raises(ValidationError, match=f"at most {MAX_OBJECT_CHARS} characters"):
        context({"plot_elements": [{"type": "world", "content": "x",
                                    "metadata": {"blob": "y" * MAX_OBJECT_CHARS}}]})
    with pytest.raises(ValidationError):
        context({"plot_elements": [{"type": "world", "content": "x",
                                    "tags": [f"t{i}" for i in range(33)]}]})
    with pytest.raises(ValidationError):
        context({"plot_elements": [{"type": "world", "content": "x", "tags": ["t" * 65]}]})
    with pytest.raises(ValidationError, match="at most 50 entries"):
        context({"character_contexts": [{"character_id": "a", "character_name": "A",
                                         "current_state": {f"k{i}": i for i in range(51)}}]})


def test_a_character_instruction_names_its_character_in_character():
    story = context({"system_instructions": [{"content": "x", "character": "Aria"}]})
    assert story.system_instructions[0].scope is InstructionScope.character
    with pytest.raises(ValidationError, match="set scope to character"):
        context({"system_instructions": [{"content": "x", "character": "Aria",
                                          "scope": "scene"}]})


# --- unknown fields ----------------------------------------------------------------------

def test_an_unknown_field_names_the_nearest_known_one():
    with pytest.raises(ValidationError) as error:
        StructuredContext.model_validate({"plot_elemnts": []})
    (only,) = error.value.errors()
    assert only["loc"] == ("plot_elemnts",) and only["type"] == "extra_forbidden"
    assert only["msg"] == "unknown field plot_elemnts; did you mean plot_elements?"


def test_unknown_fields_nested_and_beside_other_errors_are_all_reported():
    with pytest.raises(ValidationError) as error:
        GenerateChapterRequest.model_validate({
            "temperatur": 0.5, "max_tokens": 0,
            "structured_context": {"character_contexts": [
                {"character_id": "a", "character_name": "A", "personality_trait": ["x"]}]}})
    errors = {e["loc"]: e["msg"] for e in error.value.errors()}
    assert errors[("temperatur",)] == "unknown field temperatur; did you mean temperature?"
    assert errors[("structured_context", "character_contexts", 0, "personality_trait")] == (
        "unknown field personality_trait; did you mean personality_traits?")
    assert ("max_tokens",) in errors


def test_an_unknown_field_with_no_near_name_lists_the_known_ones_or_where_it_belongs():
    with pytest.raises(ValidationError) as error:
        ContextProcessingConfig.model_validate({"zzz": 1})
    assert "known fields: max_context_tokens, use_archive, phase" in (
        error.value.errors()[0]["msg"])
    with pytest.raises(ValidationError) as error:
        GenerateChapterRequest.model_validate({"character_contexts": []})
    assert error.value.errors()[0]["msg"] == (
        "unknown field character_contexts here; it is a field of structured_context")


# --- filters -----------------------------------------------------------------------------

def test_operations_have_a_phase_and_the_request_overrides_it():
    assert Audience.of("writer", "generate-chapter").phase is Phase.drafting
    assert Audience.of("writer", "modify-chapter").phase is Phase.revision
    assert Audience.of("editor", "editor-review").phase is Phase.review
    assert Audience.of("rater", "rater-feedback").phase is Phase.review
    assert Audience.of("character", "character-feedback").phase is Phase.drafting
    assert Audience.of("assistant", "llm-chat").phase is None
    config = ContextProcessingConfig(phase="revision")
    assert Audience.of("editor", "editor-review", config).phase is Phase.revision


def test_an_excluded_tag_filters_an_element_out_before_budgeting():
    story = context()
    plain = run(story, writer())
    result = run(story, writer(exclude_tags=["SPOILER"]))
    twist = by_id(result.report)["plot_elements[1]"]
    assert twist.fate is Fate.filtered and twist.kept_tokens == 0 and twist.tokens > 0
    assert twist.reason.startswith("filtered out before budgeting: tag excluded (spoiler")
    assert twist.tags == ["spoiler"]
    assert "The mentor is the thief." not in result.messages[0].content
    assert "The mentor is the thief." in plain.messages[0].content
    plot = {layer.layer: layer for layer in result.report.layers}[Layer.plot_world]
    plain_plot = {layer.layer: layer for layer in plain.report.layers}[Layer.plot_world]
    assert plot.requested_tokens < plain_plot.requested_tokens  # it cost nothing


def test_include_tags_keep_matching_and_untagged_elements_and_exclude_wins():
    result = run(context(), writer(include_tags=["current_scene", "style", "spoiler"],
                                   exclude_tags=["spoiler"]))
    fates = by_id(result.report)
    assert fates["plot_elements[8]"].fate is Fate.kept  # tagged current_scene
    assert fates["u1"].fate is Fate.kept  # tagged style
    assert fates["plot_elements[2]"].fate is Fate.kept  # untagged (tags: [])
    assert fates["plot_elements[1]"].fate is Fate.filtered  # excluded wins
    assert "tag excluded" in fates["plot_elements[1]"].reason
    backstory = fates["p1"]
    assert backstory.fate is Fate.filtered
    assert "tags not included (its tags backstory" in backstory.reason
    assert fates["character_contexts[0]"].fate is Fate.filtered  # tagged main
    assert fates["character_contexts[1]"].fate is Fate.kept


def test_elements_for_some_agents_reach_only_those_after_the_shared_block():
    story = context({"plot_elements": [
        {"type": "world", "content": "Magic costs memory."},
        {"type": "feedback", "content": "Chapter 2 drags.", "agents": ["editor", "rater"]}]})
    editor = run(story, Audience.of("editor", "editor-review"), agent="editor")
    writer_result = run(story, Audience.of("writer", "generate-chapter"))
    note = by_id(editor.report)["plot_elements[1]"]
    assert note.fate is Fate.kept and "it is for the editor, rater agents" in note.reason
    assert "placed after the shared block" in note.reason
    user = editor.messages[-1].content
    assert f"## {SCOPED_TITLE}\n- Feedback: Chapter 2 drags." in user
    assert "Chapter 2 drags." not in editor.messages[0].content
    skipped = by_id(writer_result.report)["plot_elements[1]"]
    assert skipped.fate is Fate.filtered
    assert "agent (it is for the editor, rater agents; this is the writer)" in skipped.reason
    assert "Chapter 2 drags." not in writer_result.messages[-1].content
    # the shared block stays the same for every agent
    assert editor.messages[0] == writer_result.messages[0]


def test_elements_for_some_phases_follow_the_request_phase():
    story = context({"user_requests": [
        {"content": "Tighten every paragraph.", "phases": ["revision"]}]})
    drafting = run(story, Audience.of("writer", "generate-chapter"))
    revising = run(story, Audience.of("writer", "modify-chapter"))
    override = run(story, Audience.of("writer", "generate-chapter",
                                      ContextProcessingConfig(phase="revision")))
    chat = run(story, Audience.of("assistant", "llm-chat"), agent="assistant")
    out = by_id(drafting.report)["user_requests[0]"]
    assert out.fate is Fate.filtered
    assert "phase (it is for revision; this request is drafting)" in out.reason
    for result in (revising, override):
        assert by_id(result.report)["user_requests[0]"].fate is Fate.kept
        assert "Tighten every paragraph." in result.messages[-1].content
    kept = by_id(chat.report)["user_requests[0]"]
    assert kept.fate is Fate.kept and "this request has no phase" in kept.reason


@pytest.mark.parametrize(("agent", "speaks_as", "reaches"), [
    ("character", "Aria", True),
    ("character", "aria", True),
    ("character", "Bran", False),
    ("writer", None, False),
    ("editor", None, False),
])
def test_a_character_scoped_instruction_reaches_only_that_character(agent, speaks_as,
                                                                     reaches):
    story = context()
    audience = Audience(agent=agent, phase=Phase.drafting, character=speaks_as)
    result = run(story, audience, agent=agent)
    instruction = by_id(result.report)["system_instructions[1]"]
    prompt = "".join(m.content for m in result.messages)
    assert ("Speak in short, clipped sentences." in prompt) is reaches
    assert "Speak in short, clipped sentences." not in result.messages[0].content
    if reaches:
        assert instruction.fate is Fate.kept
        assert "for the character agent speaking as Aria" in instruction.reason
    else:
        assert instruction.fate is Fate.filtered
        assert instruction.reason.startswith("filtered out before budgeting: character scope")
    # global, story and scene scopes reach every agent, in the shared block
    for key in ("s1", "system_instructions[2]", "system_instructions[3]"):
        assert by_id(result.report)[key].fate is Fate.kept


def test_a_character_instruction_may_name_the_character_by_id_or_none():
    story = context({
        "character_contexts": [{"character_id": "hero", "character_name": "Aria"}],
        "system_instructions": [
            {"content": "As the hero: terse.", "character": "hero"},
            {"content": "Any character: first person.", "scope": "character"}]})
    as_aria = run(story, Audience(agent="character", character="Aria"), agent="character")
    fates = by_id(as_aria.report)
    assert fates["system_instructions[0]"].fate is Fate.kept
    assert fates["system_instructions[1]"].fate is Fate.kept
    assert "speaking as any character" in fates["system_instructions[1]"].reason
    as_writer = by_id(run(story, Audience(agent="writer")).report)
    assert as_writer["system_instructions[1]"].fate is Fate.filtered


def test_high_priority_elements_for_this_agent_are_never_trimmed_the_others_may_be():
    story = context({
        "chapters": [{"number": 1, "content": "The keeper climbed the stairs. " * 300}],
        "plot_elements": [
            {"type": "goal", "content": "Reach the lamp. " * 40, "priority": "high",
             "agents": ["writer"]},
            {"type": "world", "content": "The sea is cold. " * 400, "priority": "low",
             "agents": ["writer"]}]})
    result = run(story, writer(), window=2048, max_tokens=200)
    report = result.report
    fates = by_id(report)
    assert fates["plot_elements[0]"].fate is Fate.kept
    assert fates["plot_elements[1]"].fate in (Fate.trimmed, Fate.dropped)
    assert "room left" in fates["plot_elements[1]"].reason
    assert report.prompt_tokens + 200 <= report.window_tokens
    assert "Reach the lamp. " * 40 in result.messages[-1].content.replace("\n", " ") + " "


def test_without_an_audience_nothing_is_filtered_or_scoped():
    elements = flatten(context({"plot_elements": [
        {"type": "world", "content": "x", "agents": ["rater"], "phases": ["review"],
         "tags": ["t"]}]}))
    assert not elements[0].filtered and not elements[0].scope and not elements[0].per_request
