"""The example request bodies of the OpenAPI docs, one per operation, all from the Alice example.

The story context is the one ``examples/alice_context.py`` builds (the author's plot elements,
characters and instructions for chapter 2 of *Alice's Adventures in Wonderland*, from
``examples/alice_chapter2.template.json``) with the opening paragraphs of chapter 1 as the story
so far instead of the whole chapter, so that the schema stays small. The docs cannot read the
corpus at run time (the image has none), hence the copy here;
``tests/api/test_docs.py`` checks it against the template and the corpus, validates every
example against its request model and posts each one to its route.
"""

from __future__ import annotations

import copy
from typing import Any

#: The first paragraphs of chapter 1, "Down the Rabbit-Hole", as ``alice_context.py`` unwraps
#: them.
ALICE_CHAPTER_1_OPENING = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it "
    "had no pictures or conversations in it, 'and what is the use of a book,' thought Alice "
    "'without pictures or conversation?'\n\n"
    "So she was considering in her own mind (as well as she could, for the hot day made her "
    "feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth "
    "the trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink "
    "eyes ran close by her.\n\n"
    "There was nothing so VERY remarkable in that; nor did Alice think it so VERY much out of "
    "the way to hear the Rabbit say to itself, 'Oh dear! Oh dear! I shall be late!' (when she "
    "thought it over afterwards, it occurred to her that she ought to have wondered at this, "
    "but at the time it all seemed quite natural); but when the Rabbit actually TOOK A WATCH "
    "OUT OF ITS WAISTCOAT-POCKET, and looked at it, and then hurried on, Alice started to her "
    "feet, for it flashed across her mind that she had never before seen a rabbit with either "
    "a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran "
    "across the field after it, and fortunately was just in time to see it pop down a large "
    "rabbit-hole under the hedge.\n\n"
    "In another moment down went Alice after it, never once considering how in the world she "
    "was to get out again."
)

#: The Alice story context (``structured_context``) of the examples.
ALICE_CONTEXT: dict[str, Any] = {
    "system_instructions": [
        {"type": "style", "content": "Write in the manner of Lewis Carroll: playful, whimsical "
         "prose in the past tense, with Alice's curious remarks to herself.",
         "priority": "high"},
    ],
    "plot_elements": [
        {"type": "scene", "content": "The long, low hall with the little golden key on the "
         "glass table and the tiny door to the garden; Alice has just eaten the cake marked "
         "EAT ME.", "priority": "high"},
        {"type": "plot_point", "content": "Alice grows more than nine feet tall, cannot fit "
         "through the door, and cries until her tears form a great pool.", "priority": "high"},
        {"type": "plot_point", "content": "The White Rabbit hurries past, drops his fan and "
         "gloves in fright; fanning herself, Alice shrinks and falls into her own pool of "
         "tears, where she meets a Mouse.", "priority": "medium"},
        {"type": "world", "content": "Wonderland runs on nonsense logic: sizes, lessons and "
         "manners change without warning.", "priority": "medium"},
        {"type": "theme", "content": "Identity: Alice wonders whether she has been changed in "
         "the night into some other girl.", "priority": "low"},
    ],
    "character_contexts": [
        {"character_id": "alice", "character_name": "Alice", "current_state": "Alone in the "
         "hall, just grown enormously tall after eating the cake; puzzled and close to tears",
         "goals": "Get into the lovely garden through the little door", "personality":
         "Curious, polite, proud of her lessons, fond of talking to herself",
         "priority": "high"},
        {"character_id": "white_rabbit", "character_name": "White Rabbit", "current_state":
         "Late for the Duchess, carrying white kid gloves and a large fan", "personality":
         "Nervous, fussy, always in a hurry", "priority": "medium"},
        {"character_id": "mouse", "character_name": "Mouse", "current_state": "Swimming in "
         "the pool of tears; frightened of cats and dogs", "priority": "low"},
    ],
    "user_requests": [
        {"type": "instruction", "content": "Keep the chapter short: a few paragraphs that end "
         "with Alice meeting the Mouse.", "priority": "medium"},
    ],
    "metadata": {"title": "Alice's Adventures in Wonderland", "author": "Lewis Carroll"},
    "chapters": [
        {"number": 1, "title": "Down the Rabbit-Hole", "content": ALICE_CHAPTER_1_OPENING},
    ],
}

#: What chapter 2 should bring (the template's own request fields).
PLOT_POINT = ("Alice grows too tall, cries a pool of tears, shrinks again and meets a Mouse in "
              "the pool.")


def _story(**fields: Any) -> dict[str, Any]:
    """An agent request on the Alice story with ``fields``."""
    return {"structured_context": copy.deepcopy(ALICE_CONTEXT), **fields}


def _examples() -> dict[str, tuple[str, dict[str, Any]]]:
    editor_review = _story(chapter_number=1)
    return {
        # --- agent operations, by operation name (their JSON and stream routes alike) ---
        "generate-chapter": (
            "Alice, chapter 2: The Pool of Tears",
            _story(plot_point=PLOT_POINT, title="The Pool of Tears", max_tokens=300)),
        "modify-chapter": (
            "Alice: rewrite chapter 1's opening",
            _story(chapter_number=1, user_request="Make the White Rabbit's first appearance "
                   "more startling, and keep Carroll's voice.", max_tokens=300)),
        "flesh-out": (
            "Alice: a sketch of the hall, as prose",
            _story(text_to_flesh_out="Alice finds the little golden key on the glass table, "
                   "tries it in every door, and finds the tiny door behind the curtain.",
                   context_type="scene", max_tokens=200)),
        "editor-review": ("Alice: review chapter 1", editor_review),
        "character-feedback": (
            "Alice: how Alice takes growing nine feet tall",
            _story(character_name="Alice", plot_point="Alice grows more than nine feet tall "
                   "and can no longer fit through the little door to the garden.")),
        "rater-feedback": (
            "Alice: rate the plot point of chapter 2",
            _story(plot_point=PLOT_POINT, rater_name="a young reader",
                   criteria=["whimsy", "coherence with the story", "surprise"])),
        "generate-character-details": (
            "Alice: a character sheet for the Mouse",
            _story(character_name="Mouse", basic_bio="A timid mouse swimming in Alice's pool "
                   "of tears, who cannot bear to hear about cats or dogs.")),
        "regenerate-bio": ("Alice: a new biography of the White Rabbit",
                           _story(character_name="White Rabbit")),
        "generate-chapter-outlines": (
            "Alice: outlines of the next three chapters",
            _story(story_outline="Alice follows the White Rabbit through a Wonderland of "
                   "nonsense, changing size as she goes, and tries to reach the lovely garden.",
                   number_of_chapters=3)),
        "llm-chat": (
            "Alice: ask the assistant about the story",
            _story(messages=[{"role": "user", "content": "What does Alice want most at the "
                                                         "start of chapter 2?"}],
                   max_tokens=120)),
        "rag-query": (
            "Alice: a question answered from the archive",
            {"question": "What was written on the little bottle Alice found on the table?",
             "file": "carroll-alice.txt", "top_k": 3, "max_tokens": 120}),
        "rag-chat": (
            "Alice: a conversation about the archive",
            {"messages": [{"role": "user", "content": "Who is the White Rabbit late for?"}],
             "file": "carroll-alice.txt", "top_k": 3, "max_tokens": 120}),
        # --- the other operations, by name ---
        "context-preview": (
            "Alice: the prompt the editor would get for chapter 1",
            {"operation": "editor-review", "request": copy.deepcopy(editor_review)}),
        "context-warm": (
            "Alice: get the story ready before asking for chapter 2",
            {"operation": "generate-chapter",
             "request": _story(plot_point=PLOT_POINT, title="The Pool of Tears")}),
        "tokens-count": (
            "Alice: the first sentence of chapter 1",
            {"text": "Alice was beginning to get very tired of sitting by her sister on the "
                     "bank, and of having nothing to do."}),
        "tokens-validate": (
            "Alice: two paragraphs of chapter 1 against a 100-token budget",
            {"texts": ALICE_CHAPTER_1_OPENING.split("\n\n")[:2], "budget_tokens": 100}),
        "archive-search": (
            "Alice: search the archive",
            {"query": "a bottle marked DRINK ME", "file": "carroll-alice.txt", "top_k": 3}),
        "chapter-pipeline": (
            "Alice, chapter 2 drafted, reviewed, rated and revised",
            _story(plot_point=PLOT_POINT, title="The Pool of Tears", max_tokens=300,
                   max_rounds=2, min_score=8, story_id="alice",
                   raters=[{"name": "a young reader", "criteria": ["whimsy", "clarity"]}])),
        "voice-compare": (
            "Alice: a sentence of Carroll's against your voice",
            {"text": ALICE_CHAPTER_1_OPENING.split("\n\n")[0]}),
        "generation-replay": (
            "A short scene, replayed with its request (it was not stored)",
            {"request": {"structured_context": {
                "plot_elements": [{"type": "scene", "content": "Hero enters forest",
                                   "priority": "high"}],
                "character_contexts": [{"character_id": "hero", "character_name": "Aria",
                                        "current_state": "determined"}]},
                "max_tokens": 64, "seed": 42}}),
        "evaluation": (
            "The holmes adapter against the base model on its held-out stories",
            {"adapter": "holmes", "validation": "holmes", "examples": 8, "max_tokens": 64}),
        "feedback": (
            "Alice: the author chose a variant of chapter 2",
            {"story_id": "alice", "operation": "generate-chapter",
             "chosen": "Alice stood by the pool of her own tears, nine feet tall and sorry.",
             "rejected": ["Alice cried."], "rating": 8,
             "note": "More of the Mouse, less of the crying.", "carry_note": True}),
    }


#: Example name -> (summary, request body). Agent operations are named by their operation;
#: the others as their routes go (``context-preview``, ``tokens-count``...).
EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = _examples()


def example(name: str) -> dict[str, Any]:
    """A fresh copy of the request body of example ``name``."""
    return copy.deepcopy(EXAMPLES[name][1])
