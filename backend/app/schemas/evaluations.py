"""Bodies of the evaluation routes (``/api/v1/evaluations``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from app.finetune.evaluate import DEFAULT_EXAMPLES, DEFAULT_MAX_TOKENS, EvaluationReport
from app.schemas.context import _Strict

#: Most examples and completion tokens one evaluation request may ask for: an evaluation of
#: 64 examples at 256 tokens is about 30 minutes of model time on 2 cores.
MAX_EXAMPLES = 64
MAX_EVALUATION_TOKENS = 256


def _relative(value: str) -> str:
    """A relative POSIX path that stays below its directory: no absolute path, no ``..``,
    no backslash, no empty part, no control character (a NUL byte is no file name)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("the path may not contain control characters")
    path = PurePosixPath(value)
    if value.startswith(("/", "~")) or path.is_absolute() or "\\" in value:
        raise ValueError("give a path relative to its directory, not an absolute one")
    if any(part in ("..", "") for part in value.split("/")):
        raise ValueError("the path may not contain '..' or empty parts")
    return value


RelativePath = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                max_length=300),
                         AfterValidator(_relative)]

JobStatus = Literal["queued", "running", "done", "failed"]


class EvaluationRequest(_Strict):
    """An evaluation of an adapter against the base model."""

    adapter: RelativePath = Field(
        description="The adapter: a registered adapter's name (GET /api/v1/models), else one "
        "`writer-assistant finetune --name` made, or a .gguf path relative to "
        "FINETUNE_DIR/adapters.", examples=["holmes"])
    validation: RelativePath = Field(
        description="The dataset: its name (`writer-assistant dataset --name`), whose "
        "validation.jsonl is evaluated, or a JSONL path relative to FINETUNE_DIR/datasets.",
        examples=["holmes"])
    examples: int = Field(default=DEFAULT_EXAMPLES, ge=1, le=MAX_EXAMPLES,
                          description="Examples evaluated (the file's first ones).")
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_EVALUATION_TOKENS,
                            description="Completion tokens of each continuation at most.")


class Progress(BaseModel):
    """Examples evaluated on both models, of ``total``."""

    done: int
    total: int


class JobError(BaseModel):
    """Why a job failed: the error's code and message (as in an error answer)."""

    code: str
    message: str


class EvaluationJob(BaseModel):
    """An evaluation job as kept on disk and answered by ``GET /api/v1/evaluations/{id}``."""

    id: str
    status: JobStatus
    progress: Progress
    request: EvaluationRequest
    created_at: datetime
    finished_at: datetime | None = None
    error: JobError | None = None
    report: EvaluationReport | None = Field(default=None, description="Once done.")
    chart_url: str | None = Field(default=None, description="The chart's PNG, once done.")
