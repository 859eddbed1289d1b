"""The one table from exception to HTTP status and error body.

Every non-2xx answer has the body ``{"error": {"code", "type", "message", "param",
"details"}}``: ``code`` is ours (stable, one per error class), ``type`` the OpenAI-style class
of the answer derived from its status (:func:`error_type`).
Domain errors answer through :func:`error_response`, wherever they arise (routes, middleware,
probes): the status and headers come from :data:`STATUS` and :data:`HEADERS`, found along the
error's class hierarchy. Routes document the same table with :func:`error_responses`.
Exception text of unexpected errors never reaches the client.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.errors import (
    AdapterMismatch,
    AdapterNotFound,
    AgentOutputInvalid,
    ArchiveFileNotFound,
    ArchiveUnavailable,
    ContextLengthExceeded,
    DatasetInvalid,
    DatasetNotFound,
    DocumentTooLarge,
    EmbeddingModelMismatch,
    EvaluationNotFound,
    FeedbackUnavailable,
    GenerationFailed,
    GenerationNotFound,
    GenerationStoreUnavailable,
    GenerationTimeout,
    InvalidAdapter,
    InvalidDocument,
    InvalidJson,
    InvalidRequest,
    ModelOverloaded,
    ModelUnavailable,
    NotReady,
    OutputTruncated,
    QueueFull,
    QueueTimeout,
    RateLimited,
    ReplayRequestMismatch,
    RequestTooLarge,
    ServiceDraining,
    Unauthenticated,
    UnknownModel,
    UnknownReference,
    UnsupportedDocument,
    VoiceProfileMissing,
    WriterAssistantError,
)
from app.observability.logging import log_error_answer
from app.schemas.responses import ErrorResponse as ErrorModel

logger = logging.getLogger(__name__)

#: HTTP status by error class. A class not listed answers with its nearest listed ancestor's.
STATUS: dict[type[WriterAssistantError], int] = {
    InvalidRequest: 422,
    InvalidJson: 400,
    UnknownReference: 422,
    ContextLengthExceeded: 400,
    ModelUnavailable: 503,
    ModelOverloaded: 429,
    AgentOutputInvalid: 502,
    OutputTruncated: 422,
    GenerationFailed: 502,
    ArchiveUnavailable: 503,
    ArchiveFileNotFound: 404,
    EmbeddingModelMismatch: 409,
    VoiceProfileMissing: 404,
    FeedbackUnavailable: 503,
    GenerationStoreUnavailable: 503,
    GenerationNotFound: 404,
    ReplayRequestMismatch: 409,
    UnsupportedDocument: 415,
    InvalidDocument: 422,
    DocumentTooLarge: 413,
    RequestTooLarge: 413,
    QueueFull: 503,
    QueueTimeout: 503,
    ServiceDraining: 503,
    NotReady: 503,
    GenerationTimeout: 504,
    RateLimited: 429,
    Unauthenticated: 401,
    AdapterNotFound: 404,
    DatasetNotFound: 404,
    DatasetInvalid: 422,
    EvaluationNotFound: 404,
    InvalidAdapter: 422,
    AdapterMismatch: 409,
    UnknownModel: 422,
}

#: Fixed headers by error class (found along the class hierarchy like :data:`STATUS`). Every
#: 429 and 503 also carries ``Retry-After``.
HEADERS: dict[type[WriterAssistantError], dict[str, str]] = {
    Unauthenticated: {"WWW-Authenticate": "Bearer"},
}

#: The middleware's refusals, possible on every route but the probes.
REFUSALS: tuple[type[WriterAssistantError], ...] = (Unauthenticated, RequestTooLarge,
                                                     RateLimited)
#: A JSON request body that does not parse (400) or validate (422).
BODY_ERRORS: tuple[type[WriterAssistantError], ...] = (InvalidJson, InvalidRequest)
#: Any use of the model: not loaded or unreachable (503), its server busy (429) or failing (502).
MODEL_ERRORS: tuple[type[WriterAssistantError], ...] = (ModelUnavailable, ModelOverloaded,
                                                         GenerationFailed)
#: A turn at the model: no turn (503) or past the generation deadline (504).
TURN_ERRORS: tuple[type[WriterAssistantError], ...] = (QueueFull, QueueTimeout, ServiceDraining,
                                                        GenerationTimeout)
#: A request's story context that cannot be served as given.
CONTEXT_ERRORS: tuple[type[WriterAssistantError], ...] = (UnknownReference,
                                                           ContextLengthExceeded)
#: A request's ``model``: no such model here (422), an adapter made for another base (409), or
#: a registered adapter file that is no longer a usable GGUF LoRA adapter (422).
MODEL_CHOICE_ERRORS: tuple[type[WriterAssistantError], ...] = (UnknownModel, AdapterMismatch,
                                                                InvalidAdapter)
#: Any use of the story archive.
ARCHIVE_ERRORS: tuple[type[WriterAssistantError], ...] = (ArchiveUnavailable,
                                                           EmbeddingModelMismatch)
#: An agent operation: everything above and the JSON agents' output checks.
AGENT_ERRORS: tuple[type[WriterAssistantError], ...] = (
    *BODY_ERRORS, *CONTEXT_ERRORS, *MODEL_CHOICE_ERRORS, *MODEL_ERRORS, *TURN_ERRORS,
    AgentOutputInvalid,
    OutputTruncated,
)


def _nearest(table: dict[type[WriterAssistantError], Any],
             kind: type[WriterAssistantError]) -> Any:
    for cls in kind.__mro__:
        if cls in table:
            return table[cls]
    return None


def status_of(kind: type[WriterAssistantError] | WriterAssistantError) -> int:
    """The HTTP status of an error (or error class): its own or its nearest listed ancestor's
    in :data:`STATUS`; 500 for none."""
    cls = kind if isinstance(kind, type) else type(kind)
    return _nearest(STATUS, cls) or 500


#: Seconds a client should wait before retrying a 503 (or 429) whose error names no other.
RETRY_AFTER_SECONDS = 5
#: Most seconds a ``Retry-After`` header says, whatever the error's own figure (a model
#: server's header, the queue's estimate): past a minute a client is better off asking again
#: than trusting an estimate. The per-minute rate limit's window fits within it.
RETRY_AFTER_MAX_SECONDS = 60

#: The ``type`` of an error body: the error classes OpenAI-compatible clients know.
ErrorType = Literal["invalid_request_error", "authentication_error", "rate_limit_error",
                    "server_error"]


def error_type(status: int) -> ErrorType:
    """The ``type`` of an error answer with HTTP ``status``: 401 ``authentication_error``,
    429 ``rate_limit_error``, any other 4xx ``invalid_request_error`` (the caller's to fix),
    5xx ``server_error`` (ours or the model server's; 503 and 504 may succeed later)."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(error: WriterAssistantError) -> dict[str, Any]:
    """The JSON envelope of a domain error: code, type (:func:`error_type` of its status),
    message, param and details, nothing else (``retry_after`` goes in a header, ``retryable``
    stays internal)."""
    return {
        "error": {
            "code": error.code,
            "type": error_type(status_of(error)),
            "message": error.message,
            "param": error.param,
            "details": error.details,
        }
    }


class ErrorResponse(JSONResponse):
    """An error envelope. Every error answer is one, wherever it is made (exception handlers,
    middleware), so this is the one place error answers are counted in the app's metrics
    (rejections or backend errors, by code) and logged (an ``error_answer`` event)."""

    def __init__(self, body: dict[str, Any], status_code: int,
                 headers: dict[str, str] | None = None, *, record: bool = True) -> None:
        super().__init__(body, status_code=status_code, headers=headers)
        self.code = str(body["error"]["code"])
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.record:
            services = getattr(getattr(scope.get("app"), "state", None), "services", None)
            if services is not None:
                services.metrics.count_error(self.code)
            log_error_answer(self.code, self.status_code)
        await super().__call__(scope, receive, send)


def error_response(error: WriterAssistantError, *, record: bool = True) -> ErrorResponse:
    """The answer to a domain error: status and headers from the table, the error's envelope.
    A 429 or 503 carries ``Retry-After``: the error's ``retry_after`` (else
    :data:`RETRY_AFTER_SECONDS`) rounded up, at least 1 and at most
    :data:`RETRY_AFTER_MAX_SECONDS`.

    ``record=False`` leaves it out of the metrics and the ``error_answer`` log (a probe's
    answer reports the server's state; it refuses no work)."""
    status = status_of(error)
    headers = dict(_nearest(HEADERS, type(error)) or {})
    if status in (429, 503):
        seconds = RETRY_AFTER_SECONDS if error.retry_after is None else error.retry_after
        headers["Retry-After"] = str(min(RETRY_AFTER_MAX_SECONDS, max(1, math.ceil(seconds))))
    return ErrorResponse(error_body(error), status_code=status, headers=headers or None,
                         record=record)


def error_responses(*errors: type[WriterAssistantError]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: each status the table gives ``errors``, documented with the
    error envelope and the codes that answer with it."""
    codes: dict[int, list[str]] = {}
    for error in errors:
        status = status_of(error)
        if error.code not in codes.setdefault(status, []):
            codes[status].append(error.code)
    return {
        status: {"model": ErrorModel, "description": "Error codes: " + ", ".join(
            f"`{code}`" for code in codes[status])}
        for status in sorted(codes)
    }


def envelope(status: int, code: str, message: str, param: str | None = None,
             headers: dict[str, str] | None = None, **details: Any) -> ErrorResponse:
    """A JSON error response in the one envelope, for answers that are no domain error
    (Starlette's HTTP errors, unexpected exceptions)."""
    body = {"error": {"code": code, "type": error_type(status), "message": message,
                      "param": param, "details": details}}
    return ErrorResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    dotted = ""
    for part in parts:
        dotted += f"[{part}]" if part.isdigit() else (f".{part}" if dotted else part)
    return dotted


async def _domain_error(_request: Request, error: WriterAssistantError) -> JSONResponse:
    return error_response(error)


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "")
        return error_response(InvalidJson(
            f"The request body is not valid JSON ({detail}); send a JSON object."))
    shown = errors[:5]
    parts = [f"{_location(tuple(e['loc'])) or 'body'}: {e['msg']}" for e in shown]
    more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    return error_response(InvalidRequest(
        "; ".join(parts) + more,
        param=_location(tuple(shown[0]["loc"])) or None,
        errors=[{"param": _location(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
                for e in errors[:20]],
    ))


async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    return envelope(error.status_code, codes.get(error.status_code, "http_error"),
                     str(error.detail), headers=getattr(error, "headers", None))


async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=error)  # not in an except block: pass the error
    # This answer comes from the outermost middleware, past the request-id middleware.
    request_id = correlation_id.get()
    return envelope(500, "internal_error", "The server failed to handle this request.",
                    headers={"X-Request-Id": request_id} if request_id else None)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(WriterAssistantError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
