"""ASGI middleware of the HTTP layer: request size, API keys (tenants) and per-user limits.

Pure ASGI (no ``BaseHTTPMiddleware``) so that streamed responses pass through unbuffered.
Middleware sits outside the app's exception handlers, so each refusal is a domain error
answered directly through the one table (:func:`app.api.errors.error_response`).
"""

from __future__ import annotations

import hmac
import time
from collections import defaultdict
from collections.abc import Mapping

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ErrorResponse, error_response
from app.errors import RateLimited, RequestTooLarge, Unauthenticated
from app.tenancy import LOCAL_TENANT, current_tenant

#: Routes that never need an API key and never count against a user's limits: probes.
OPEN_PATHS = frozenset({"/health", "/ready", "/api/v1/health", "/api/v1/ready"})
#: The API docs (``app.api.docs``): the pages and the schema they read, plus their assets
#: under :data:`DOCS_ASSETS`. They hold no secrets: open without a key unless
#: ``DOCS_REQUIRE_KEY``, and never counted against a user's limits.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/docs/assets"


def is_docs_path(path: str) -> bool:
    """Whether ``path`` is a docs page, the OpenAPI schema or one of the pages' assets."""
    return path in DOCS_PATHS or path.startswith(DOCS_ASSETS + "/")


class _BodyTooLarge(BaseException):
    """Raised from ``receive`` past the limit. A BaseException on purpose: FastAPI turns any
    Exception raised while it reads a body into a 400, and this must reach the middleware."""


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> ErrorResponse:
        return error_response(RequestTooLarge(
            f"The request body is over the {self.max_bytes}-byte limit (MAX_REQUEST_BYTES); "
            "send less."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refusal()(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refusal()(scope, receive, send)


def _presented_key(scope: Scope) -> bytes:
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").strip()


class ApiKeys:
    """Every route but the probes (and the docs, unless ``docs_need_key``) requires an API
    key; the key names the tenant.

    ``keys`` maps tenant to key. Empty: keys are off and every request is the local tenant.
    The presented key is compared with every configured key in constant time
    (``hmac.compare_digest``), so timing tells nothing about which key nearly matched. Keys are
    never logged.
    """

    def __init__(self, app: ASGIApp, keys: Mapping[str, str], docs_need_key: bool = False
                 ) -> None:
        self.app = app
        self.keys = {tenant: key.encode() for tenant, key in keys.items()}
        self.docs_need_key = docs_need_key

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or (not self.docs_need_key and is_docs_path(path))

    def tenant_for(self, presented: bytes) -> str | None:
        found = None
        for tenant, key in self.keys.items():
            if hmac.compare_digest(presented, key) and found is None:
                found = tenant
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["tenant"] = LOCAL_TENANT
        if self.keys and not self._open(scope["path"]):
            tenant = self.tenant_for(_presented_key(scope))
            if tenant is None:
                refusal = Unauthenticated("This route needs an API key: send 'Authorization: "
                                          "Bearer <key>' (or 'X-API-Key: <key>').")
                await error_response(refusal)(scope, receive, send)
                return
            state["tenant"] = tenant
        token = current_tenant.set(state["tenant"])
        try:
            await self.app(scope, receive, send)
        finally:
            current_tenant.reset(token)


class UserLimits:
    """Per-user limits: concurrent requests and requests per minute, each a 429 with
    Retry-After. A user is the tenant (API keys on) or the client address (keys off).

    Requests per minute use a moving window (the ``limits`` library). ``0`` turns a limit off.
    """

    def __init__(self, app: ASGIApp, per_minute: int, concurrent: int) -> None:
        self.app = app
        self.concurrent = concurrent
        self.in_flight: dict[str, int] = defaultdict(int)
        self.item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    @staticmethod
    def _user(scope: Scope) -> str:
        tenant = scope.get("state", {}).get("tenant")
        if tenant and tenant != LOCAL_TENANT:
            return f"tenant:{tenant}"
        client = scope.get("client")
        return f"client:{client[0] if client else 'unknown'}"

    @staticmethod
    def _refuse(message: str, retry_after: float) -> ErrorResponse:
        return error_response(RateLimited(message, retry_after=retry_after))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or is_docs_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        user = self._user(scope)
        if self.concurrent and self.in_flight[user] >= self.concurrent:
            refusal = self._refuse(f"Too many requests at once: at most {self.concurrent} per "
                                   "user (RATE_LIMIT_CONCURRENT).", 1)
            await refusal(scope, receive, send)
            return
        if self.item is not None and not self.limiter.hit(self.item, user):
            reset = self.limiter.get_window_stats(self.item, user).reset_time
            refusal = self._refuse(f"Too many requests: at most {self.item.amount} a minute per "
                                   "user (RATE_LIMIT_PER_MINUTE).", reset - time.time())
            await refusal(scope, receive, send)
            return
        self.in_flight[user] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[user] -= 1
            if not self.in_flight[user]:
                del self.in_flight[user]
