"""What an agent operation generates with: its ``max_tokens`` and temperature, and why.

First set wins:

- ``max_tokens``: the request's ``max_tokens`` (refused above the operation's limit); its
  ``target_words`` (chapter operations, :func:`tokens_for_words`);
  ``ENDPOINT_<OPERATION>_MAX_TOKENS``; the agent's default (:meth:`AgentSpec.max_tokens_for`);
  ``LLM_MAX_TOKENS``.
- ``temperature``: the request's; ``ENDPOINT_<OPERATION>_TEMPERATURE``; the agent's;
  ``LLM_TEMPERATURE``.

Every value but the request's own ``max_tokens`` is capped at the operation's limit (the
smaller of ``LLM_MAX_TOKENS_LIMIT`` and the agent's ``max_tokens_limit``). A free-text
agent's default and one computed from ``target_words`` are also scaled to the window: they
take at most a quarter of it (:data:`WINDOW_FRACTION`), so that three quarters stay for the
buffer, the story and the task (the writer's 2,000 tokens fit the embedded model's
8,192-token window as they are, and become 1,024 with 4,096); a shorter text is still an
answer. A JSON agent's default is sized for its output model (the outlines' grows with the
number asked for) and a JSON answer cut short is no answer, so it is not scaled; nor are
``ENDPOINT_*_MAX_TOKENS`` and ``LLM_MAX_TOKENS``, the operator's choice. When a value was
lowered, the plan says why (the assembly report's ``max_tokens_note``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.agents.spec import AgentSpec
from app.config import (
    ContextSettings,
    EndpointOverrides,
    EndpointSettings,
    SamplingSettings,
    endpoint_prefix,
)
from app.errors import InvalidRequest
from app.llm.protocol import SamplingParams
from app.schemas.requests import TargetWordsRequest

#: Words per model token of English prose: the figure the summaries' targets use
#: (``app.context.summaries``; a test keeps the two equal).
WORDS_PER_TOKEN = 0.75
#: Extra room on top of the tokens ``target_words`` needs, so that a model running a little
#: long is not cut mid-sentence.
WORDS_HEADROOM = 1.2
#: A free-text agent's default ``max_tokens`` (its own, or one from ``target_words``) takes at
#: most 1 / WINDOW_FRACTION of the request's window.
WINDOW_FRACTION = 4


def tokens_for_words(words: int) -> int:
    """Completion tokens to ask for about ``words`` words: ``words / 0.75`` plus 20%."""
    return math.ceil(words / WORDS_PER_TOKEN * WORDS_HEADROOM)


def window_tokens(context: ContextSettings, n_ctx: int, cap: int | None = None) -> int:
    """The window assembly plans a request in: the smallest of ``CONTEXT_MAX_TOKENS``, the
    model's ``n_ctx`` and the request's ``max_context_tokens`` (``cap``)."""
    return min(context.max_tokens, n_ctx, cap or n_ctx)


def operation_limit(spec: AgentSpec, sampling: SamplingSettings) -> int:
    """The most completion tokens ``spec`` may generate: ``LLM_MAX_TOKENS_LIMIT``, or the
    agent's own limit when lower."""
    return min(sampling.max_tokens_limit, spec.max_tokens_limit or sampling.max_tokens_limit)


@dataclass(frozen=True)
class MaxTokens:
    """A request's ``max_tokens`` and, when a default was lowered, why (``note``)."""

    tokens: int
    note: str | None = None


def default_max_tokens(spec: AgentSpec, request: Any, sampling: SamplingSettings,
                       endpoint: EndpointOverrides, window: int) -> MaxTokens:
    """``max_tokens`` for a request that sets none (``request`` ``None``: one with default
    fields), see the module's docstring."""
    words = request.target_words if isinstance(request, TargetWordsRequest) else None
    own = spec.max_tokens if request is None else spec.max_tokens_for(request)
    scaled = spec.output_model is None  # free text: shorter is still an answer
    if words is not None:
        wanted, source = tokens_for_words(words), f"for target_words {words}"
    elif endpoint.max_tokens is not None:
        wanted, source = endpoint.max_tokens, f"{endpoint_prefix(spec.operation)}_MAX_TOKENS"
        scaled = False
    elif own is not None:
        wanted, source = own, f"the {spec.agent} agent's default"
    else:
        wanted, source, scaled = sampling.max_tokens, "LLM_MAX_TOKENS", False
    tokens, reasons = wanted, []
    limit = operation_limit(spec, sampling)
    if tokens > limit:
        tokens = limit
        reasons.append(f"capped at the limit of {limit} for {spec.operation}")
    share = max(1, window // WINDOW_FRACTION)
    if scaled and tokens > share:
        tokens = share
        reasons.append(f"scaled to a quarter of this request's {window}-token window, to leave "
                       "room for the prompt (a request's own max_tokens is not scaled)")
    if not reasons:
        return MaxTokens(tokens)
    return MaxTokens(tokens, f"max_tokens {wanted} ({source}) was lowered to {tokens}: "
                             + "; ".join(reasons) + ".")


@dataclass(frozen=True)
class SamplingPlan:
    """A request's sampling and, when its ``max_tokens`` default was lowered, why."""

    params: SamplingParams
    max_tokens_note: str | None = None


def plan_sampling(spec: AgentSpec, request: Any, sampling: SamplingSettings,
                  endpoint: EndpointOverrides, window: int) -> SamplingPlan:
    """Sampling for ``request``: its overrides, else ``ENDPOINT_*``, else the agent's, else
    the server's (see the module's docstring); ``window``: the request's window in tokens
    (:func:`window_tokens`).

    Raises:
        InvalidRequest: the request's ``max_tokens`` is above the operation's limit.
    """
    limit = operation_limit(spec, sampling)
    if request.max_tokens is not None:
        if request.max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens {request.max_tokens} is above the limit of {limit} for "
                f"{spec.operation}.",
                param="max_tokens",
            )
        max_tokens = MaxTokens(request.max_tokens)
    else:
        max_tokens = default_max_tokens(spec, request, sampling, endpoint, window)
    temperature = request.temperature
    if temperature is None:
        temperature = endpoint.temperature
    if temperature is None:
        temperature = spec.temperature
    output_model = spec.output_model_for(request)
    params = SamplingParams.of(
        sampling, max_tokens=max_tokens.tokens, temperature=temperature, seed=request.seed,
        json_schema=output_model.model_json_schema() if output_model else None,
    )
    return SamplingPlan(params, max_tokens.note)


def completion_reserve(specs: Iterable[AgentSpec], context: ContextSettings,
                       sampling: SamplingSettings, endpoints: EndpointSettings,
                       n_ctx: int) -> int:
    """The completion reserve every story's shared block is planned against:
    ``CONTEXT_COMPLETION_RESERVE_TOKENS``, else the largest default ``max_tokens`` of
    ``specs`` for a request with default fields, as :func:`default_max_tokens` gives it
    (``ENDPOINT_*`` applied, scaled to the window of ``CONTEXT_MAX_TOKENS`` and ``n_ctx``),
    so that a request at its operation's default shares the story's block."""
    if context.completion_reserve_tokens is not None:
        return context.completion_reserve_tokens
    window = window_tokens(context, n_ctx)
    return max(default_max_tokens(spec, None, sampling, endpoints.of(spec.operation),
                                  window).tokens for spec in specs)
