"""The rater agent: a score and opinion of a plot point or passage against the story."""

from __future__ import annotations

from app.agents.outputs import RaterFeedback
from app.agents.spec import AgentSpec, TaskInput, json_answer
from app.schemas.requests import RaterFeedbackRequest
from app.schemas.responses import RaterFeedbackResponse

ROLE = "You are the rater."


def rater_feedback_task(request: RaterFeedbackRequest) -> TaskInput:
    criteria = ", ".join(request.criteria)
    return TaskInput(
        f"As {request.rater_name}, rate this for {criteria}, with a short opinion and up to "
        f"five suggestions:\n{request.plot_point}"
    )


SPECS = [
    AgentSpec("rater-feedback", "rater", ROLE, rater_feedback_task,
              RaterFeedbackRequest, RaterFeedbackResponse, json_answer(),
              summary="Rater agent: rater feedback", max_tokens=600, temperature=0.7,
              output_model=RaterFeedback, max_tokens_limit=2048),
]
