"""The content checks of app.agents.quality: answers that say nothing are named, answers that
say something pass, loops are cut and preambles stripped."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from app.agents.outputs import (
    CharacterDetails,
    CharacterReaction,
    EditorReview,
    RaterFeedback,
    chapter_outlines_model,
)
from app.agents.quality import (
    FLOORS,
    MIN_PROSE_WORDS,
    Rule,
    check_output,
    check_prose,
    describe,
    find_loop,
    find_preamble,
    repair_prose,
)

EDITOR_TASK = ("Review chapter 2 as it stands above under \"Story so far\": one to six "
               "suggestions, each with the issue, a concrete fix and its priority (high, "
               "medium or low).")
RATER_TASK = ("As Rater, rate this for overall quality, with a short opinion and up to five "
              "suggestions:\nAlice cries a pool of tears, shrinks and swims in it with a Mouse "
              "who is frightened of cats.")
CHARACTER_TASK = ("Be Alice. React to this plot point as Alice: Alice, nine feet tall, hears "
                  "the White Rabbit's feet pattering in the distance and calls to him for help.\n"
                  "Give short lists of actions, dialog lines, physical sensations, emotions and "
                  "internal monologue.")

CHAPTER = (
    "Chapter 3: The Pool of Tears\n\n"
    "'Curiouser and curiouser!' cried Alice, for she was so much surprised that for the moment "
    "she quite forgot how to speak good English. Her feet were now so far off that she could "
    "hardly see them, and she wondered who would put on her shoes and stockings for her now. "
    "She sat down and cried, shedding gallons of tears, until there was a large pool all round "
    "her, about four inches deep and reaching half down the hall.")


def editor(*suggestions: tuple[str, str]) -> EditorReview:
    return EditorReview.model_validate({"suggestions": [
        {"issue": issue, "suggestion": fix, "priority": "medium"} for issue, fix in suggestions]})


def rules(problems: list) -> set[Rule]:
    return {problem.rule for problem in problems}


# --- JSON outputs: the degenerate answers of the issue ------------------------------------


def test_editor_digits_are_rejected_in_both_fields() -> None:
    problems = check_output(editor(("1234567890", "1234567890")), EDITOR_TASK)
    paths = {problem.path for problem in problems}
    assert {"suggestions[0].issue", "suggestions[0].suggestion"} <= paths
    assert Rule.no_letters in rules(problems)
    assert Rule.same_in_fields in rules(problems)


def test_rater_punctuation_opinion_is_rejected() -> None:
    output = RaterFeedback.model_validate({"score": 7, "opinion": '"); "', "suggestions": []})
    problems = check_output(output, RATER_TASK)
    assert [(p.path, p.rule) for p in problems] == [("opinion", Rule.no_letters)]
    assert "no letters" in str(problems[0])


def test_a_digit_run_inside_words_is_rejected() -> None:
    problems = check_output(editor(("Dialogue 1234567 feels stiff", "Cut the long speech.")))
    assert [(p.path, p.rule) for p in problems] == [("suggestions[0].issue", Rule.digit_run)]


@pytest.mark.parametrize("issue", ["issue", "Issue", "The issue", "issue 1", "Suggestion"])
def test_a_field_name_as_a_value_is_a_copy(issue: str) -> None:
    problems = check_output(editor((issue, "Start the chapter with the Rabbit's footsteps.")))
    assert rules(problems) == {Rule.prompt_copy}


def test_schema_text_and_enum_values_as_values_are_copies() -> None:
    described = check_output(editor(("One editorial note on the text under review.",
                                      "Start with a sound in the hall.")))
    enum = check_output(editor(("The opening drags", "high")))
    assert rules(described) == {Rule.prompt_copy}
    assert rules(enum) == {Rule.prompt_copy}


def test_a_piece_of_the_instruction_is_a_copy() -> None:
    problems = check_output(editor(("Weak opening", "a concrete fix and its priority")),
                            EDITOR_TASK)
    assert [(p.path, p.rule) for p in problems] == [("suggestions[0].suggestion",
                                                     Rule.prompt_copy)]
    # the same words are fine when the instruction does not contain them
    assert check_output(editor(("Weak opening", "a concrete fix and its priority"))) == []


def test_the_plot_point_given_back_is_a_copy() -> None:
    output = RaterFeedback.model_validate({
        "score": 6, "suggestions": [],
        "opinion": "Alice cries a pool of tears, shrinks and swims in it with a Mouse who is "
                   "frightened of cats."})
    assert rules(check_output(output, RATER_TASK)) == {Rule.prompt_copy}


@pytest.mark.parametrize("value", ["string", "N/A", "TODO", "lorem ipsum", "none"])
def test_placeholders_are_rejected(value: str) -> None:
    problems = check_output(editor(("The pacing is slow", value)))
    assert rules(problems) == {Rule.placeholder}


def test_fields_shorter_than_their_floor_are_rejected() -> None:
    problems = check_output(editor(("Pacing", "Cut.")))
    assert [(p.path, p.rule) for p in problems] == [("suggestions[0].issue", Rule.too_short),
                                                    ("suggestions[0].suggestion", Rule.too_short)]
    assert "fewer than 3" in str(problems[1])


def test_identical_items_are_rejected() -> None:
    same = ("The hall is described twice", "Cut the second description of the hall.")
    problems = check_output(editor(same, same, same))
    assert [(p.path, p.rule) for p in problems] == [("suggestions", Rule.same_items)]


def test_every_list_of_a_reaction_saying_the_same_is_rejected() -> None:
    output = CharacterReaction.model_validate({
        "actions": ["Alice looks around"], "dialog": ["Alice looks around"],
        "physicalSensations": [], "emotions": ["Alice looks around"], "internalMonologue": []})
    assert Rule.same_in_fields in rules(check_output(output, CHARACTER_TASK))


def test_repeated_list_entries_are_rejected() -> None:
    output = CharacterReaction.model_validate({
        "actions": ["She calls out", "She calls out"], "dialog": ["Rabbit, please!"],
        "physicalSensations": ["Her neck aches"], "emotions": ["fear"],
        "internalMonologue": ["Whatever will become of me?"]})
    assert [(p.path, p.rule) for p in check_output(output, CHARACTER_TASK)] == [
        ("actions", Rule.same_items)]


# --- JSON outputs: useful answers pass -----------------------------------------------------


GOOD: list[tuple[type[BaseModel], dict, str]] = [
    (EditorReview, {"suggestions": [
        {"issue": "Flat opening", "suggestion": "Start with a sound.", "priority": "high"},
        {"issue": "The Rabbit's entrance is rushed",
         "suggestion": "Give him a line about the Duchess before he drops the gloves.",
         "priority": "medium"}]}, EDITOR_TASK),
    (RaterFeedback, {"score": 7, "opinion": "Whimsical and true to Carroll, if a little short.",
                     "suggestions": ["Let the Mouse speak sooner."]}, RATER_TASK),
    (CharacterReaction, {
        "actions": ["Stoops to the floor", "Waves her enormous hand"],
        "dialog": ["Help!", "Oh, Mr. Rabbit, please wait!"],
        "physicalSensations": ["Her neck aches"], "emotions": ["fear", "hope"],
        "internalMonologue": ["Whatever will he think of me?"]}, CHARACTER_TASK),
    (CharacterDetails, {
        "name": "Bill", "age": "12", "appearance": "A small lizard in a waistcoat.",
        "personality": "Timid and obliging.", "background": "The White Rabbit's odd-job man.",
        "motivations": "To please his master.", "fears": "Chimneys"},
     "Create a character sheet for Bill that fits this story's world."),
    (chapter_outlines_model(1), {"outlines": [
        {"number": 3, "title": "Caucus-Race",
         "summary": "The animals dry themselves with a race. The Dodo declares everyone won."}]},
     "Plan the next 1 chapters, numbered from 3."),
]


@pytest.mark.parametrize(("model", "data", "task"), GOOD, ids=lambda x: getattr(x, "__name__", ""))
def test_useful_answers_pass(model: type[BaseModel], data: dict, task: str) -> None:
    assert check_output(model.model_validate(data), task) == []


def test_floors_name_real_fields() -> None:
    for (model, name), floor in FLOORS.items():
        assert name in model.model_fields, (model, name)
        assert floor.words >= 1


def test_describe_lists_the_first_problems() -> None:
    problems = check_output(editor(("1234567890", "1234567890")))
    line = describe(problems, limit=1)
    assert line.startswith("suggestions[0].issue: '1234567890' has no letters; and ")


# --- prose ---------------------------------------------------------------------------------


def test_a_chapter_passes() -> None:
    verdict = check_prose(CHAPTER)
    assert verdict.ok and verdict.loop_start is None and not verdict.preamble
    assert repair_prose(CHAPTER) == (CHAPTER, (), True)


ISSUE_PREAMBLE = ("I'm here to help with the chapter's prose, and I'll guide you through the "
                  "story.")


def test_the_issue_preamble_is_stripped() -> None:
    text = f"{ISSUE_PREAMBLE} {CHAPTER}"
    verdict = check_prose(text)
    assert [p.rule for p in verdict.problems] == [Rule.preamble]
    assert verdict.preamble == ISSUE_PREAMBLE
    assert text[verdict.preamble_end:] == CHAPTER
    repaired = repair_prose(text)
    assert repaired.text == CHAPTER and repaired.useful
    assert "preamble" in repaired.notes[0]


def test_a_preamble_alone_is_not_removable() -> None:
    verdict = check_prose(ISSUE_PREAMBLE)
    assert verdict.preamble == ISSUE_PREAMBLE and verdict.preamble_end is None
    assert {p.rule for p in verdict.problems} == {Rule.preamble, Rule.too_short}
    assert repair_prose(ISSUE_PREAMBLE).useful is False


@pytest.mark.parametrize("opening", [
    "Sure! Here's chapter 3:\n\n",
    "Certainly. Here is chapter 3 of the story.\n",
    "As an AI, I can write this chapter for you. Let's begin:\n",
    "Here is chapter 3:\n",
    "**Sure, I'd be happy to help!** ",
    "In this chapter, I continue the story's tale. The first paragraph continues the story's "
    "narrative.\n\n",
])
def test_preambles_are_stripped_up_to_the_prose(opening: str) -> None:
    preamble, start = find_preamble(opening + CHAPTER)
    assert preamble and start == len(opening)


@pytest.mark.parametrize("opening", [
    "'Sure,' said Alice, ",  # dialog, not an assistant
    "I had seen little of Holmes lately. ",  # a first-person narrator
    "Chapter 3: Here is the Rabbit\n\n",
])
def test_prose_openings_are_not_preambles(opening: str) -> None:
    assert find_preamble(opening + CHAPTER) == ("", None)


def test_talk_that_never_ends_is_not_removable() -> None:
    text = ("Sure! I'll write it. I hope you like it. You can ask for changes. I will do my "
            "best. Let me know. " + CHAPTER)
    assert find_preamble(text)[1] is None


def test_a_sentence_loop_is_trimmed_after_its_first_copy() -> None:
    loop = "She said, I am so very tired of being alone. "
    text = CHAPTER + " " + loop * 6
    verdict = check_prose(text)
    assert Rule.loop in {p.rule for p in verdict.problems}
    assert verdict.loop_start == len(CHAPTER) + 1 + len(loop)
    repaired = repair_prose(text)
    assert repaired.text == CHAPTER + " " + loop.strip()
    assert repaired.useful and "loop" in repaired.notes[0]


def test_a_short_phrase_loop_is_trimmed() -> None:
    text = CHAPTER + " And then the Rabbit ran and ran and the Rabbit ran and ran and the " \
                     "Rabbit ran and ran and the Rabbit ran and ran and the Rabbit ran"
    start, unit = find_loop(text) or (0, "")
    assert text[:start].endswith("the Rabbit ran and ran and ")
    assert unit == "the Rabbit ran and ran and"
    assert repair_prose(text).useful


def test_a_loop_from_the_start_leaves_nothing_useful() -> None:
    text = "I'm sorry. " * 30
    verdict = check_prose(text)
    assert verdict.loop_start == len("I'm sorry. ")
    repaired = repair_prose(text)
    assert repaired.text == "I'm sorry." and not repaired.useful


def test_a_sentence_said_three_times_apart_is_a_loop() -> None:
    line = "The hall was long and low."
    text = f"{line} Alice cried. {line} The Rabbit ran past. {line} She sighed."
    start, unit = find_loop(text) or (0, "")
    assert unit == line and start == text.index(line, 1)


def test_a_character_run_is_a_loop() -> None:
    text = CHAPTER + " " + "!" * 40
    start, unit = find_loop(text) or (0, "")
    assert unit == "!" and start == len(CHAPTER) + 2
    assert repair_prose(text).text == CHAPTER + " !"


@pytest.mark.parametrize("text", [
    # a phrase said twice, and a tag line that recurs with other words between
    "'Oh dear! Oh dear! I shall be late!' said the Rabbit. " + CHAPTER,
    CHAPTER + " 'Nonsense,' said the Mock Turtle. 'Stuff,' said the Mock Turtle, and 'Rubbish,' "
    "said the Mock Turtle, after a pause.",
    # one sentence repeated once
    CHAPTER + " She sat down and cried, shedding gallons of tears.",
])
def test_ordinary_repetition_is_not_a_loop(text: str) -> None:
    assert find_loop(text) is None


def test_no_letters_and_too_short_prose() -> None:
    assert {p.rule for p in check_prose('"); "').problems} == {Rule.no_letters}
    short = check_prose("Alice cried.")
    assert [p.rule for p in short.problems] == [Rule.too_short]
    assert check_prose("Alice cried.", min_words=2).ok
    assert MIN_PROSE_WORDS > 2


@pytest.mark.parametrize("opening", [
    # what the embedded model wrote for chapter 3 of Alice
    "This chapter, written in the author's voice, continues from where it left off.\n",
    "In the middle of the story, I'll continue to write from where we left off. The narrator "
    "continues:\n\n",
    "In the last chapter, I have continued the story after the one just ended. ",
])
def test_talk_about_the_chapter_is_a_preamble(opening: str) -> None:
    preamble, start = find_preamble(opening + CHAPTER)
    assert preamble == opening.strip() and start == len(opening)


@pytest.mark.parametrize("opening", [
    "I'm thrilled to share a chapter that delves into the world of the Caucus-Race. ",
    "This is the final chapter of the story. ",
    "Now that we have completed the story's ending, let's continue with chapter 3. ",
    "I'm not sure if I should write another chapter, but I will. ",
])
def test_more_talk_the_model_opened_with(opening: str) -> None:
    preamble, start = find_preamble(opening + CHAPTER)
    assert preamble == opening.strip() and start == len(opening)
