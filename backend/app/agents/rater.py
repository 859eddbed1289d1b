"""The rater agent: a score and opinion of a plot point or passage against the story."""

from __future__ import annotations

from app.agents.outputs import RaterFeedback
from app.agents.references import braces, chapter_source
from app.agents.spec import AgentSpec, TaskInput, json_answer
from app.schemas.requests import RaterFeedbackRequest
from app.schemas.responses import RaterFeedbackResponse

ROLE = "You are the rater."


def rater_feedback_task(request: RaterFeedbackRequest) -> TaskInput:
    criteria = ", ".join(request.criteria)
    opening = f"As {request.rater_name}, rate "
    closing = f" for {criteria}, with a short opinion and up to five suggestions"
    if request.chapter_number is None:
        return TaskInput(f"{opening}this{closing}:\n{request.plot_point}")
    source = chapter_source(request.structured_context, request.chapter_number, None,
                            "chapter_number")
    return source.task(braces(opening) + "{where}" + braces(closing) + ".", "Text to rate")


SPECS = [
    AgentSpec("rater-feedback", "rater", ROLE, rater_feedback_task,
              RaterFeedbackRequest, RaterFeedbackResponse, json_answer(),
              summary="Rater agent: rater feedback", max_tokens=600, temperature=0.7,
              output_model=RaterFeedback, max_tokens_limit=2048),
]
