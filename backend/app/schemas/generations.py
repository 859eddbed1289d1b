"""Bodies of ``/api/v1/generations``: a record, a page of records, a replay."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.generations.records import GenerationSummary
from app.schemas.context import _Strict


class GenerationList(BaseModel):
    """One page of the tenant's records, newest first."""

    items: list[GenerationSummary]
    total: int = Field(description="Records matching the filters, all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null on the "
                                    "last.")


class ReplayRequest(_Strict):
    """What a replay needs besides the record: the request itself, when the record did not
    store it (it must be the recorded request: its SHA-256 is compared)."""

    request: dict[str, Any] | None = Field(
        default=None, description="The original request body, exactly as sent (needed when "
        "it was sent without store_request).")


class ReplayResponse(BaseModel):
    """A replay's outcome."""

    replay_of: str
    generation_id: str | None = Field(description="The replay's own record.")
    identical: bool = Field(description="The output is byte-identical to the recorded one "
                            "(the text, and a JSON agent's output).")
    prompt_identical: bool | None = Field(description="The prompt's SHA-256 matches the "
                                          "record's (null for a pipeline run).")
    model_identical: bool = Field(description="The served model file's SHA-256 matches the "
                                  "record's.")
    first_difference: int | None = Field(description="Index of the first character where "
                                         "the texts differ; null when equal.")
    text: str = Field(description="The replay's text.")
    recorded_text: str = Field(description="The recorded text.")
