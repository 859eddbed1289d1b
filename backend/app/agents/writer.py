"""The writer agent: chapters (new, revised), fleshed-out sketches and chapter plans."""

from __future__ import annotations

from app.agents.outputs import chapter_outlines_model
from app.agents.references import braces, chapter_source
from app.agents.spec import AgentSpec, TaskInput, json_answer, text_answer
from app.schemas.requests import (
    ChapterOutlinesRequest,
    FleshOutRequest,
    GenerateChapterRequest,
    ModifyChapterRequest,
)
from app.schemas.responses import (
    ChapterOutlinesResponse,
    ChapterResponse,
    FleshOutResponse,
    ModifyChapterResponse,
)

ROLE = "You are the writer."
#: The writer's defaults for prose (chapters, revisions, fleshed-out sketches), as in the
#: original Writer Assistant: about 1,500 words. A window too small for them scales the
#: tokens down (``app.agents.sampling``).
PROSE_TEMPERATURE = 0.8
PROSE_MAX_TOKENS = 2000


def _about(words: int | None) -> str:
    """The task's length request for ``target_words``."""
    return f"\nWrite about {words} words." if words else ""


def generate_chapter_task(request: GenerateChapterRequest) -> TaskInput:
    chapters = request.structured_context.chapters
    number = request.chapter_number or (chapters[-1].number + 1 if chapters else 1)
    heading = f"chapter {number}" + (f", titled \"{request.title}\"" if request.title else "")
    lines = [f"Write {heading} of the story."]
    if request.plot_point:
        lines.append(f"In this chapter: {request.plot_point}")
    lines.append("Continue from where the story so far ends.")
    return TaskInput("\n".join(lines) + _about(request.target_words),
                     summary={"chapter_number": number, "title": request.title})


def modify_chapter_task(request: ModifyChapterRequest) -> TaskInput:
    source = chapter_source(request.structured_context, request.chapter_number,
                            request.current_chapter, "chapter_number")
    instruction = (
        f"Revise {{where}} as the author asks: {braces(request.user_request)}\n"
        "Keep everything the request does not touch."
        + braces(_about(request.target_words))
    )
    return source.task(instruction, "Chapter to revise")


def flesh_out_task(request: FleshOutRequest) -> TaskInput:
    return TaskInput(
        f"Expand this {request.context_type} sketch into full prose with concrete sensory detail, "
        f"keeping its events, order and voice.{_about(request.target_words)}\n\n"
        f"Sketch:\n{request.text_to_flesh_out}"
    )


def chapter_outlines_task(request: ChapterOutlinesRequest) -> TaskInput:
    chapters = request.structured_context.chapters
    start = chapters[-1].number + 1 if chapters else 1
    outline = f" The author's outline: {request.story_outline}" if request.story_outline else ""
    return TaskInput(
        f"Plan the next {request.number_of_chapters} chapters, numbered from {start}.{outline}\n"
        "Give each a number, a title and a two-sentence summary."
    )


#: About 220 tokens per outline plus the JSON frame.
def _outline_tokens(chapters: int) -> int:
    return 80 + 220 * chapters


SPECS = [
    AgentSpec("generate-chapter", "writer", ROLE, generate_chapter_task,
              GenerateChapterRequest, ChapterResponse, text_answer("chapter_text"),
              summary="Writer agent: generate chapter",
              max_tokens=PROSE_MAX_TOKENS, temperature=PROSE_TEMPERATURE),
    AgentSpec("modify-chapter", "writer", ROLE, modify_chapter_task,
              ModifyChapterRequest, ModifyChapterResponse, text_answer("modified_chapter"),
              summary="Writer agent: modify chapter",
              max_tokens=PROSE_MAX_TOKENS, temperature=PROSE_TEMPERATURE),
    AgentSpec("flesh-out", "writer", ROLE, flesh_out_task,
              FleshOutRequest, FleshOutResponse, text_answer("fleshed_out_text"),
              summary="Writer agent: flesh out",
              max_tokens=PROSE_MAX_TOKENS, temperature=PROSE_TEMPERATURE),
    AgentSpec("generate-chapter-outlines", "writer", ROLE, chapter_outlines_task,
              ChapterOutlinesRequest, ChapterOutlinesResponse, json_answer(),
              summary="Writer agent: generate chapter outlines", temperature=0.6,
              output_model=lambda r: chapter_outlines_model(r.number_of_chapters),
              max_tokens=_outline_tokens(3),  # 3 outlines by default
              max_tokens_per_request=lambda r: _outline_tokens(r.number_of_chapters)),
]
