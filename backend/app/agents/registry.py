"""The agent operations: one declaration each.

A new agent operation is a request model, a task function and an entry in :data:`REGISTRY`;
the HTTP layer registers an endpoint per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.agents.outputs import (
    CharacterDetails,
    CharacterReaction,
    EditorReview,
    RaterFeedback,
    chapter_outlines_model,
)
from app.agents.spec import AgentSpec, TaskInput
from app.config import ContextSettings, SamplingSettings
from app.errors import UnknownReference
from app.llm.protocol import ChatMessage
from app.schemas.context import StructuredContext
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

#: Opens every story's shared block: the whole team, described once, so that what one agent
#: call adds after the story (its role and task) stays short. That part is processed on every
#: call, at about 5 ms a token on 2 cores with a 6,000-token story in the KV cache
#: (bench/bench_agents.py), so what every agent shares belongs here.
TEAM_PREAMBLE = (
    "You are Writer Assistant, a team of fiction-writing agents helping an author with one "
    "story. The story context below is the author's; stay true to it. The team:\n"
    "- writer: a novelist who writes vivid, coherent prose in the story's own voice, shows "
    "rather than tells, honours the author's requests, and writes only the prose asked for "
    "(no titles, no notes);\n"
    "- editor: a developmental editor who finds concrete problems of consistency, pacing, "
    "clarity and style and proposes specific fixes, most important first;\n"
    "- character: inhabits one character at a time and answers from inside their head, true "
    "to their personality, state and history, in their own voice;\n"
    "- rater: a demanding reader who judges a plot point or passage against the story so far, "
    "scores it from 1 (poor) to 10 (excellent) and explains the score;\n"
    "- assistant: answers the author's questions about the story, briefly and concretely.\n"
    "Each request below the story names the agent that answers it. Editor, character and "
    "rater answers, character sheets and chapter plans are JSON only."
)
WRITER_ROLE = "You are the writer."
EDITOR_ROLE = "You are the editor."
CHARACTER_ROLE = "You are the character agent."
RATER_ROLE = "You are the rater."
ASSISTANT_ROLE = "You are the assistant."

@dataclass(frozen=True)
class _ChapterSource:
    """The chapter a request is about: ``where`` names it in the task (the chapter where it
    stands in the story block, or "the text below"); ``text`` its text; ``reference`` its
    context element id when it is in the story block."""

    where: str
    text: str
    reference: str | None = None
    summary: dict[str, object] = field(default_factory=dict)

    def task(self, instruction: str, label: str) -> TaskInput:
        """A task that refers to the chapter in place, with the quoting variant beside it."""
        quoted = f"{instruction.format(where='the text below')}\n\n{label}:\n{self.text}"
        if self.reference is None:
            return TaskInput(quoted, summary=self.summary)
        return TaskInput(instruction.format(where=self.where), reference=self.reference,
                         inline=quoted, summary=self.summary)


def _chapter_source(
    context: StructuredContext, number: int | None, text: str | None, param: str
) -> _ChapterSource:
    """The chapter a request points at, by number (in the story block) or as text.

    Raises:
        UnknownReference: no chapter of that number in the context.
    """
    if number is None:
        return _ChapterSource("the text below", text or "")
    chapter = context.find_chapter(number)
    if chapter is None:
        known = ", ".join(str(c.number) for c in context.chapters) or "none"
        raise UnknownReference(
            f"chapter {number} is not in structured_context.chapters (chapters given: {known}).",
            param=param,
        )
    index = context.chapters.index(chapter)
    return _ChapterSource(f'chapter {number} as it stands above under "Story so far"',
                          chapter.content, f"chapters[{index}]", {"chapter_number": number})


def _character(context: StructuredContext, name: str) -> str:
    character = context.find_character(name)
    if character is None:
        known = ", ".join(c.character_name for c in context.character_contexts) or "none"
        raise UnknownReference(
            f"character '{name}' is not in structured_context.character_contexts "
            f"(characters given: {known}); add it there or fix the name.",
            param="character_name",
        )
    return character.character_name


def generate_chapter_task(request: GenerateChapterRequest) -> TaskInput:
    chapters = request.structured_context.chapters
    number = request.chapter_number or (chapters[-1].number + 1 if chapters else 1)
    heading = f"chapter {number}" + (f", titled \"{request.title}\"" if request.title else "")
    lines = [f"Write {heading} of the story."]
    if request.plot_point:
        lines.append(f"In this chapter: {request.plot_point}")
    lines.append("Continue from where the story so far ends.")
    return TaskInput("\n".join(lines), summary={"chapter_number": number, "title": request.title})


def modify_chapter_task(request: ModifyChapterRequest) -> TaskInput:
    source = _chapter_source(
        request.structured_context, request.chapter_number, request.current_chapter,
        "chapter_number",
    )
    instruction = (
        f"Revise {{where}} as the author asks: {_braces(request.user_request)}\n"
        "Keep everything the request does not touch."
    )
    return source.task(instruction, "Chapter to revise")


def flesh_out_task(request: FleshOutRequest) -> TaskInput:
    return TaskInput(
        f"Expand this {request.context_type} sketch into full prose with concrete sensory detail, "
        "keeping its events, order and voice.\n\n"
        f"Sketch:\n{request.text_to_flesh_out}"
    )


def editor_review_task(request: EditorReviewRequest) -> TaskInput:
    source = _chapter_source(
        request.structured_context, request.chapter_number, request.chapter_to_review,
        "chapter_number",
    )
    instruction = (
        "Review {where}: one to six suggestions, each with the issue, a concrete fix and its "
        "priority (high, medium or low)."
    )
    return source.task(instruction, "Text to review")


def _braces(text: str) -> str:
    """``text`` safe inside a ``str.format`` template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def character_feedback_task(request: CharacterFeedbackRequest) -> TaskInput:
    name = _character(request.structured_context, request.character_name)
    return TaskInput(
        f"Be {name}. React to this plot point as {name}: {request.plot_point}\n"
        "Give short lists of actions, dialog lines, physical sensations, emotions and "
        "internal monologue.",
        summary={"character_name": name},
    )


def rater_feedback_task(request: RaterFeedbackRequest) -> TaskInput:
    criteria = ", ".join(request.criteria)
    return TaskInput(
        f"As {request.rater_name}, rate this for {criteria}, with a short opinion and up to "
        f"five suggestions:\n{request.plot_point}"
    )


def character_details_task(request: CharacterDetailsRequest) -> TaskInput:
    notes = f" Notes from the author: {request.basic_bio}" if request.basic_bio else ""
    return TaskInput(
        f"Create a character sheet for {request.character_name} that fits this story's world."
        f"{notes}\nGive name, age, appearance, personality, background, motivations and fears, "
        "each brief.",
        summary={"character_name": request.character_name},
    )


def regenerate_bio_task(request: RegenerateBioRequest) -> TaskInput:
    name = _character(request.structured_context, request.character_name)
    return TaskInput(
        f"Write a new biography of {name} in one or two paragraphs, consistent with their "
        "character sheet and the story so far.",
        summary={"character_name": name},
    )


def chapter_outlines_task(request: ChapterOutlinesRequest) -> TaskInput:
    chapters = request.structured_context.chapters
    start = chapters[-1].number + 1 if chapters else 1
    outline = f" The author's outline: {request.story_outline}" if request.story_outline else ""
    return TaskInput(
        f"Plan the next {request.number_of_chapters} chapters, numbered from {start}.{outline}\n"
        "Give each a number, a title and a two-sentence summary."
    )


def llm_chat_task(request: LlmChatRequest) -> TaskInput:
    *history, last = request.messages
    return TaskInput(
        last.content,
        history=tuple(ChatMessage(role=turn.role, content=turn.content) for turn in history),
    )


REGISTRY: dict[str, AgentSpec] = {
    spec.operation: spec
    for spec in [
        AgentSpec("generate-chapter", "writer", WRITER_ROLE, generate_chapter_task, streams=True),
        AgentSpec("modify-chapter", "writer", WRITER_ROLE, modify_chapter_task, streams=True),
        AgentSpec("flesh-out", "writer", WRITER_ROLE, flesh_out_task, streams=True),
        AgentSpec("editor-review", "editor", EDITOR_ROLE, editor_review_task,
                  max_tokens=700, temperature=0.3, output_model=EditorReview,
                  max_tokens_limit=2048),
        AgentSpec("character-feedback", "character", CHARACTER_ROLE, character_feedback_task,
                  max_tokens=600, temperature=0.7, output_model=CharacterReaction,
                  max_tokens_limit=2048),
        AgentSpec("rater-feedback", "rater", RATER_ROLE, rater_feedback_task,
                  max_tokens=500, temperature=0.3, output_model=RaterFeedback,
                  max_tokens_limit=2048),
        AgentSpec("generate-character-details", "character", CHARACTER_ROLE,
                  character_details_task, max_tokens=700, temperature=0.7,
                  output_model=CharacterDetails, max_tokens_limit=2048),
        AgentSpec("regenerate-bio", "character", CHARACTER_ROLE, regenerate_bio_task,
                  max_tokens=300, max_tokens_limit=1024),
        AgentSpec("generate-chapter-outlines", "writer", WRITER_ROLE, chapter_outlines_task,
                  temperature=0.6,
                  output_model=lambda r: chapter_outlines_model(r.number_of_chapters),
                  # about 220 tokens per outline plus the JSON frame (3 outlines by default)
                  max_tokens=80 + 220 * 3,
                  max_tokens_per_request=lambda r: 80 + 220 * r.number_of_chapters),
        AgentSpec("llm-chat", "assistant", ASSISTANT_ROLE, llm_chat_task),
    ]
}


def default_completion_reserve(context: ContextSettings, sampling: SamplingSettings) -> int:
    """The completion reserve every story's shared block is planned against:
    ``CONTEXT_COMPLETION_RESERVE_TOKENS``, else the largest default ``max_tokens`` of the
    agents (``LLM_MAX_TOKENS`` for those without their own), in tokens."""
    if context.completion_reserve_tokens is not None:
        return context.completion_reserve_tokens
    return max(spec.max_tokens or sampling.max_tokens for spec in REGISTRY.values())
