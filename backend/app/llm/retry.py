"""Retry policies, built on tenacity: one per concern, and none runs inside another.

- **Startup** (:func:`startup_retrying`): bringing the model up, i.e. loading the GGUF in
  process or connecting to a remote server and checking it. Every failure is retried, with no
  limit on attempts or time (the service recovers by itself once the cause goes away; ``/health``
  says why meanwhile): after a transient failure of a remote server (unreachable or still
  loading: :func:`is_retryable`) every ``LLM_CONNECT_RETRY_S`` seconds, after any other failure
  (file missing, not GGUF, a tokenizer mismatch, ``LLM_CONNECT_RETRY_S=0``) every
  ``MODEL_LOAD_RETRY_S`` seconds. Connecting itself makes one attempt.
- **Upstream** (:class:`UpstreamRetry`): a remote server's transient failure while a request
  is served (a connection error, its 503 while loading, its 429 with ``Retry-After``), when
  opening a generation's stream and when counting tokens with its tokenize endpoint.
  Exponential backoff, bounded in attempts and in seconds; see the class for the figures. A
  stream is retried only while opening it, before its first token, so no text is ever repeated.
  The tokenizer's calls made while connecting are not retried by it (the startup policy retries
  the whole connection), and the ``openai`` client's own retries are off.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
)

from app.config import Settings

logger = logging.getLogger(__name__)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is transient, so the same call may succeed if made again: a model
    server that is unreachable, loading (its 503) or busy (its 429).

    The one place retryability is decided: an error's ``retryable`` attribute, else
    ``details["retryable"]``.
    """
    details = getattr(error, "details", None) or {}
    return bool(getattr(error, "retryable", False) or details.get("retryable"))


# --- startup ----------------------------------------------------------------------------------
def startup_wait_s(settings: Settings, error: BaseException) -> float:
    """Seconds to wait before the next startup attempt after ``error``:
    ``LLM_CONNECT_RETRY_S`` after a transient failure (when it is above 0), else
    ``MODEL_LOAD_RETRY_S``."""
    if settings.model.remote.connect_retry_s > 0 and is_retryable(error):
        return settings.model.remote.connect_retry_s
    return settings.lifecycle.model_load_retry_s


def startup_retrying(settings: Settings,
                     on_retry: Callable[[BaseException, float], None]) -> AsyncRetrying:
    """The startup policy: retry any ``Exception`` (never a cancellation) with no limit on
    attempts or time, waiting :func:`startup_wait_s` seconds between attempts.

    ``on_retry(error, wait_s)`` is called after each failure, before the wait. Use it as
    ``await startup_retrying(settings, on_retry)(open_model, ...)``.
    """
    def wait(state: RetryCallState) -> float:
        return startup_wait_s(settings, _error(state))

    def before_sleep(state: RetryCallState) -> None:
        on_retry(_error(state), state.upcoming_sleep)

    return AsyncRetrying(retry=retry_if_exception_type(Exception), stop=stop_never, wait=wait,
                         before_sleep=before_sleep, reraise=True)


# --- upstream ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpstreamRetry:
    """How a remote model server's transient failure during a request is retried (all times in
    seconds).

    An error is retried when :func:`is_retryable` says so, at most ``max_attempts`` attempts in
    all (default 4: the first and three retries). Before a retry it waits the server's
    ``Retry-After`` when it sent one (``error.retry_after``), else an exponential backoff:
    ``backoff_s`` doubled at each retry, at most ``max_backoff_s``, plus up to ``jitter_s`` of
    random (default 0.5, 1, 2 s, each plus up to 0.25 s). A ``Retry-After`` above
    ``max_retry_after_s`` (default 5 s) ends retrying at once: the caller gets the error with
    the server's ``Retry-After``. No wait is started that would end more than ``max_total_s``
    (default 10 s) after the first attempt began; the last attempt's error is raised as it is
    (a domain error, never tenacity's ``RetryError``). One attempt's own time is bounded by
    ``LLM_REQUEST_TIMEOUT_S``, whose timeout is not retried.
    """

    max_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 4.0
    jitter_s: float = 0.25
    max_retry_after_s: float = 5.0
    max_total_s: float = 10.0

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is transient and its ``Retry-After`` (if any) within the cap."""
        retry_after = getattr(error, "retry_after", None)
        return is_retryable(error) and (retry_after is None
                                        or retry_after <= self.max_retry_after_s)

    def wait_s(self, retry: int, error: BaseException) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first) after ``error``."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, float(retry_after))
        backoff = min(self.backoff_s * 2 ** (retry - 1), self.max_backoff_s)
        return backoff + random.uniform(0.0, self.jitter_s)

    def _options(self, operation: str) -> dict[str, Any]:
        def wait(state: RetryCallState) -> float:
            return self.wait_s(state.attempt_number, _error(state))

        def before_sleep(state: RetryCallState) -> None:
            error = _error(state)
            logger.warning("model server failed while %s (%s); attempt %d of %d in %.1f s",
                           operation, getattr(error, "message", type(error).__name__),
                           state.attempt_number + 1, self.max_attempts, state.upcoming_sleep)

        return {
            "retry": retry_if_exception(self.should_retry),
            "stop": stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_total_s),
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(self, operation: str) -> AsyncRetrying:
        """The policy for a coroutine: ``await policy.retrying("generating")(open_stream)``.
        ``operation`` names the call in the log."""
        return AsyncRetrying(**self._options(operation))

    def retrying_sync(self, operation: str) -> Retrying:
        """The policy for a blocking call (sleeps in its thread; never on the event loop)."""
        return Retrying(**self._options(operation))


#: The policy a :class:`app.llm.remote.RemoteGenerator` serves requests with.
UPSTREAM_RETRY = UpstreamRetry()


def _error(state: RetryCallState) -> BaseException:
    assert state.outcome is not None and state.outcome.failed
    error = state.outcome.exception()
    assert error is not None
    return error
