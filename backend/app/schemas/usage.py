"""Token usage of one generation, in the OpenAI API's shape (model tokens)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.llm.protocol import Completion


class PromptTokensDetails(BaseModel):
    """Where the prompt tokens came from."""

    cached_tokens: int = Field(
        default=0,
        description="Prompt tokens whose KV state was reused (a warm story prefix) instead of "
        "processed again.",
    )


class Usage(BaseModel):
    """Token usage of one generation (model tokens)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, completion: Completion) -> Usage:
        """The usage block of ``completion``."""
        return cls(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=completion.cached_tokens),
        )
