"""ASGI middleware of the HTTP layer: request size, API keys (tenants) and per-user limits.

Pure ASGI (no ``BaseHTTPMiddleware``) so that streamed responses pass through unbuffered.
Middleware sits outside the app's exception handlers, so each refusal is a domain error
answered directly through the one table (:func:`app.api.errors.error_response`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio.to_thread
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import ConfigurationError, StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ErrorResponse, error_response
from app.errors import RateLimited, RequestTooLarge, Unauthenticated
from app.tenancy import LOCAL_TENANT, current_tenant

if TYPE_CHECKING:
    from app.observability.metrics import Metrics

_logger = logging.getLogger(__name__)

#: Seconds a Redis call of the rate limits may take (connecting included) before the check is
#: skipped; a hung server costs a request at most this.
STORAGE_TIMEOUT_S = 1.0
#: Seconds the rate limits stop asking a storage that failed before they try it again.
STORAGE_RECHECK_S = 5.0

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


def rate_limit_storage(uri: str) -> Storage:
    """The storage of the ``limits`` library for ``uri`` (RATE_LIMIT_STORAGE_URI:
    ``memory://``, ``redis://host:port/db`` and the other Redis schemes), raising
    :class:`limits.errors.StorageError` on a failed call. Redis calls time out after
    :data:`STORAGE_TIMEOUT_S` seconds unless the URI says otherwise (``?socket_timeout=``).
    Nothing is connected yet.

    Raises:
        limits.errors.ConfigurationError: an unknown scheme, or its client is not installed.
    """
    options: dict[str, float] = {}
    if uri.startswith("redis"):
        options = {"socket_timeout": STORAGE_TIMEOUT_S,
                   "socket_connect_timeout": STORAGE_TIMEOUT_S}
    storage = storage_from_string(uri, wrap_exceptions=True, **options)
    if not isinstance(storage, Storage):  # an async+ scheme: its calls would need the loop
        raise ConfigurationError("RATE_LIMIT_STORAGE_URI: async+ schemes are not supported")
    return storage


class RateLimits:
    """Moving-window counts per minute in one storage (:func:`rate_limit_storage`), shared by
    the middleware of an app and, in Redis, by every replica that names the same server.
    A remote storage is asked from a worker thread, never on the event loop.

    A failing storage fails open: the check is skipped and the request served, a warning is
    logged when it starts failing (and one when it answers again), each skipped check is
    counted (``writer_assistant_rate_limit_checks_skipped_total``), and for
    ``recheck_after_s`` seconds (default :data:`STORAGE_RECHECK_S`) the storage is not asked
    at all, so a hung server delays only the requests of one :data:`STORAGE_TIMEOUT_S` in
    that time.
    """

    def __init__(self, storage: Storage, metrics: Metrics | None = None,
                 recheck_after_s: float | None = None) -> None:
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)
        self.metrics = metrics
        self.recheck_after_s = STORAGE_RECHECK_S if recheck_after_s is None else recheck_after_s
        self._local = isinstance(storage, MemoryStorage)
        self._failing_until: float | None = None

    @classmethod
    def from_uri(cls, uri: str, metrics: Metrics | None = None) -> RateLimits:
        """Limits in the storage of ``uri`` (see :func:`rate_limit_storage`)."""
        return cls(rate_limit_storage(uri), metrics)

    def _check(self, item: RateLimitItem, user: str, count: bool) -> float | None:
        allowed = self.limiter.hit(item, user) if count else self.limiter.test(item, user)
        if allowed:
            return None
        return max(self.limiter.get_window_stats(item, user).reset_time - time.time(), 1.0)

    async def refusal(self, item: RateLimitItem, user: str, *, count: bool = True
                      ) -> float | None:
        """``None`` when ``user`` is within ``item`` (and, with ``count``, the request is
        counted), else the seconds until it is (at least 1). ``None`` too while the storage
        fails (fail open)."""
        now = time.monotonic()
        if self._failing_until is not None and now < self._failing_until:
            self._skipped()
            return None
        try:
            if self._local:
                wait = self._check(item, user, count)
            else:
                wait = await anyio.to_thread.run_sync(self._check, item, user, count)
        except (StorageError, OSError) as error:
            cause = getattr(error, "storage_error", error)
            if self._failing_until is None:
                _logger.warning("rate-limit storage failed; per-minute limits are off until it "
                                "answers", extra={"error": type(cause).__name__})
            self._failing_until = time.monotonic() + self.recheck_after_s
            self._skipped()
            return None
        if self._failing_until is not None:
            self._failing_until = None
            _logger.warning("rate-limit storage answers again; per-minute limits are on")
        return wait

    def _skipped(self) -> None:
        if self.metrics is not None:
            self.metrics.rate_limit_checks_skipped.inc()


def _presented_key(scope: Scope) -> bytes:
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").strip()


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class ApiKeys:
    """Every route but the probes (and the docs, unless ``docs_need_key``) requires an API
    key; the key names the tenant.

    ``keys`` maps tenant to key. Empty: keys are off and every request is the local tenant.
    Keys are kept as SHA-256 digests, and the presented key's digest is compared with every
    one of them (``hmac.compare_digest``, all of them each time), so timing tells neither
    which key nearly matched nor how long any key is. Keys are never logged.

    Key guessing: with ``failures_per_minute`` and ``limits``, a client address whose requests
    without a valid key reach ``failures_per_minute`` in a minute gets 429 (Retry-After) for
    every request that needs a key, a valid one included, until the window frees.
    """

    def __init__(self, app: ASGIApp, keys: Mapping[str, str], docs_need_key: bool = False,
                 failures_per_minute: int = 0, limits: RateLimits | None = None) -> None:
        self.app = app
        self.digests = [(tenant, _digest(key.encode())) for tenant, key in keys.items()]
        self.docs_need_key = docs_need_key
        self.failures = RateLimitItemPerMinute(failures_per_minute) \
            if failures_per_minute else None
        self.limits = limits or RateLimits(rate_limit_storage("memory://"))

    @property
    def keys_on(self) -> bool:
        return bool(self.digests)

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or (not self.docs_need_key and is_docs_path(path))

    def tenant_for(self, presented: bytes) -> str | None:
        """The tenant whose key ``presented`` is, else ``None``."""
        presented_digest = _digest(presented)
        found = None
        for tenant, digest in self.digests:
            if hmac.compare_digest(presented_digest, digest) and found is None:
                found = tenant
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["tenant"] = LOCAL_TENANT
        if self.keys_on and not self._open(scope["path"]):
            guesser = f"auth-failures:{_client_address(scope)}"
            if self.failures is not None:
                wait = await self.limits.refusal(self.failures, guesser, count=False)
                if wait is not None:
                    guessing = RateLimited(
                        "Too many requests without a valid API key from this address: at most "
                        f"{self.failures.amount} a minute (RATE_LIMIT_AUTH_FAILURES_PER_MINUTE).",
                        retry_after=wait)
                    await error_response(guessing)(scope, receive, send)
                    return
            tenant = self.tenant_for(_presented_key(scope))
            if tenant is None:
                if self.failures is not None:
                    await self.limits.refusal(self.failures, guesser)
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

    Requests per minute use a moving window (the ``limits`` library) in ``limits``' storage
    (RATE_LIMIT_STORAGE_URI), so replicas sharing a Redis share each user's budget; concurrent
    requests are counted in this process only. ``0`` turns a limit off.
    """

    def __init__(self, app: ASGIApp, per_minute: int, concurrent: int,
                 limits: RateLimits | None = None) -> None:
        self.app = app
        self.concurrent = concurrent
        self.in_flight: dict[str, int] = defaultdict(int)
        self.item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self.limits = limits or RateLimits(rate_limit_storage("memory://"))

    @staticmethod
    def _user(scope: Scope) -> str:
        tenant = scope.get("state", {}).get("tenant")
        if tenant and tenant != LOCAL_TENANT:
            return f"tenant:{tenant}"
        return f"client:{_client_address(scope)}"

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
        self.in_flight[user] += 1  # before the storage is asked: no await between check and count
        try:
            wait = None if self.item is None else await self.limits.refusal(self.item, user)
            if wait is not None and self.item is not None:
                refusal = self._refuse(f"Too many requests: at most {self.item.amount} a minute "
                                       "per user (RATE_LIMIT_PER_MINUTE).", wait)
                await refusal(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            self.in_flight[user] -= 1
            if not self.in_flight[user]:
                del self.in_flight[user]
