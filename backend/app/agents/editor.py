"""The editor agent: a review of a chapter (by number, where it stands, or given as text)."""

from __future__ import annotations

from app.agents.outputs import EditorReview
from app.agents.references import chapter_source
from app.agents.spec import AgentSpec, TaskInput, json_answer
from app.schemas.requests import EditorReviewRequest
from app.schemas.responses import EditorReviewResponse

ROLE = "You are the editor."


def editor_review_task(request: EditorReviewRequest) -> TaskInput:
    source = chapter_source(request.structured_context, request.chapter_number,
                            request.chapter_to_review, "chapter_number")
    instruction = (
        "Review {where}: one to six suggestions, each with the issue, a concrete fix and its "
        "priority (high, medium or low)."
    )
    return source.task(instruction, "Text to review")


SPECS = [
    AgentSpec("editor-review", "editor", ROLE, editor_review_task,
              EditorReviewRequest, EditorReviewResponse, json_answer(),
              summary="Editor agent: editor review", max_tokens=800, temperature=0.6,
              output_model=EditorReview, max_tokens_limit=2048),
]
