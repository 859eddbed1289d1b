from app.context.trim import trim_to_budget
from app.llm.fake import FakeGenerator

count = FakeGenerator().count_tokens

TEXT = (
    "Mr. Holmes sat by the fire. He lit his pipe. The rain beat on the window.\n\n"
    "Watson came in. He shook the water from his coat and sat down.\n\n"
    "A knock sounded at the door. It was a client, pale and trembling."
)


def test_whole_text_fits_unchanged():
    result = trim_to_budget(TEXT, count(TEXT) + 5, count, keep_tail=False)
    assert result.text == TEXT
    assert result.tokens == count(TEXT)


def test_keeps_head_at_paragraph_then_sentence_boundary():
    first_paragraph = TEXT.split("\n\n")[0]
    budget = count(first_paragraph) + 6  # room for one short sentence more
    result = trim_to_budget(TEXT, budget, count, keep_tail=False)
    assert result.text.startswith(first_paragraph)
    assert result.text.endswith("Watson came in.")
    assert result.boundary == "sentence"
    assert result.tokens <= budget


def test_abbreviation_does_not_split_a_sentence():
    result = trim_to_budget(TEXT, count("Mr. Holmes sat by the fire.") + 1, count, keep_tail=False)
    assert result.text == "Mr. Holmes sat by the fire."


def test_keep_tail_keeps_the_end():
    last_paragraph = TEXT.split("\n\n")[-1]
    result = trim_to_budget(TEXT, count(last_paragraph) + 1, count, keep_tail=True)
    assert result.text == last_paragraph
    assert result.boundary == "paragraph"


def test_nothing_fits_gives_empty_text():
    result = trim_to_budget(TEXT, 2, count, keep_tail=False)
    assert result.text == ""
    assert result.tokens == 0


def test_never_exceeds_budget_for_any_budget():
    for budget in range(count(TEXT) + 3):
        for keep_tail in (False, True):
            result = trim_to_budget(TEXT, budget, count, keep_tail=keep_tail)
            assert result.tokens <= budget
            assert result.tokens == count(result.text)
            assert result.text in TEXT or all(p in TEXT for p in result.text.split("\n\n"))
