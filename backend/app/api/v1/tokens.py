"""Token counting with the served model's own tokenizer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field, StringConstraints, model_validator

from app.api.errors import BODY_ERRORS, MODEL_ERRORS, REFUSALS, error_responses
from app.schemas.context import MAX_ELEMENT_CHARS, MAX_ELEMENTS, _Strict
from app.schemas.responses import TokenCountResponse, TokenValidateResponse
from app.state import Services, get_services

router = APIRouter(prefix="/tokens", tags=["tokens"],
                   responses=error_responses(*REFUSALS, *BODY_ERRORS, *MODEL_ERRORS))

Text = Annotated[str, StringConstraints(max_length=MAX_ELEMENT_CHARS)]


class TokenCountRequest(_Strict):
    """Give ``text`` or ``texts``, not both."""

    text: Text | None = None
    texts: list[Text] | None = Field(default=None, max_length=MAX_ELEMENTS)

    @model_validator(mode="after")
    def _one_of(self) -> TokenCountRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of text or texts")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class TokenValidateRequest(TokenCountRequest):
    """Check that the texts together fit ``budget_tokens`` (default: the model's n_ctx)."""

    budget_tokens: int | None = Field(default=None, ge=1)


@router.post("/count", response_model=TokenCountResponse)
async def count_tokens(body: TokenCountRequest,
                       services: Services = Depends(get_services)) -> TokenCountResponse:
    """Count tokens of one text or of each of several texts (no special tokens)."""
    runner = services.require_runner()
    generator = runner.generator
    counts = await runner.count_tokens(body.all_texts())
    single = body.text is not None
    return TokenCountResponse(
        model=generator.model_name,
        tokens=counts[0] if single else None,
        counts=None if single else counts,
        total_tokens=sum(counts),
    )


@router.post("/validate", response_model=TokenValidateResponse)
async def validate_tokens(body: TokenValidateRequest,
                          services: Services = Depends(get_services)) -> TokenValidateResponse:
    """Whether the texts together fit ``budget_tokens`` tokens."""
    runner = services.require_runner()
    generator = runner.generator
    total = sum(await runner.count_tokens(body.all_texts()))
    budget = body.budget_tokens or generator.n_ctx
    return TokenValidateResponse(
        model=generator.model_name, total_tokens=total, budget_tokens=budget,
        fits=total <= budget, n_ctx=generator.n_ctx,
    )
