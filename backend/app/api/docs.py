"""The API docs: Swagger UI at ``/docs`` and ReDoc at ``/redoc``, both served from the app's own
assets, and the OpenAPI schema they read.

The pages' JavaScript and CSS ship in the ``fastapi-offline`` package and are served under
:data:`~app.api.middleware.DOCS_ASSETS`, so the docs render with no network (FastAPI's own
pages load them from a CDN). The schema gets, on top of what FastAPI generates:

- with API keys on, the two ways :class:`~app.api.middleware.ApiKeys` accepts a key as
  security schemes (``Authorization: Bearer <key>``, ``X-API-Key: <key>``), referenced by
  every operation that needs one (all but the probes), so that ``/docs`` has a working
  Authorize button;
- an example request body on every operation that takes JSON (:mod:`app.api.examples`: the
  Alice story).

The pages are sent with a Content-Security-Policy that lets them reach the app only (ReDoc
would otherwise fetch its vendor's logo from a CDN). The pages and the schema hold no secrets
and open without a key unless ``DOCS_REQUIRE_KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.agents.spec import AgentSpec
from app.api.examples import EXAMPLES
from app.api.middleware import DOCS_ASSETS, OPEN_PATHS
from app.api.v1.router import API_PREFIX

#: The security schemes' names in the schema.
BEARER = "bearerAuth"
API_KEY_HEADER = "apiKeyHeader"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {"type": "http", "scheme": "bearer",
             "description": "An API key of `API_KEYS`, as `Authorization: Bearer <key>`."},
    API_KEY_HEADER: {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "An API key of `API_KEYS`, as `X-API-Key: <key>`."},
}
#: Either scheme will do (security requirements in a list are alternatives).
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY_HEADER: []}]

#: The examples of the routes that are not agent operations, by path.
ROUTE_EXAMPLES = {
    f"{API_PREFIX}/context/preview": "context-preview",
    f"{API_PREFIX}/context/warm": "context-warm",
    f"{API_PREFIX}/tokens/count": "tokens-count",
    f"{API_PREFIX}/tokens/validate": "tokens-validate",
    f"{API_PREFIX}/archive/search": "archive-search",
    f"{API_PREFIX}/chapter-pipeline": "chapter-pipeline",
    f"{API_PREFIX}/chapter-pipeline/stream": "chapter-pipeline",
    f"{API_PREFIX}/voice/compare": "voice-compare",
    f"{API_PREFIX}/feedback": "feedback",
    f"{API_PREFIX}/generations/{{generation_id}}/replay": "generation-replay",
    f"{API_PREFIX}/evaluations": "evaluation",
}
#: The docs pages: what they load and what they contact is the app's own (inline scripts and
#: styles are the pages' own; ReDoc draws with data: images and searches in a blob: worker).
PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def docs_app(**fastapi: Any) -> FastAPI:
    """A FastAPI app (``fastapi`` as for :class:`~fastapi.FastAPI`) whose ``/docs`` and
    ``/redoc`` pages load their assets from the app itself."""
    return FastAPIOffline(
        static_url=DOCS_ASSETS,
        # No badge fetched from a validator service; show how long each request took.
        swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
        **fastapi,
    )


class DocsPolicy:
    """Send the docs pages (:data:`PAGES`) with :data:`CONTENT_SECURITY_POLICY`: the browser
    then loads and contacts nothing but the app for them, whatever their scripts ask."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PAGES:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Content-Security-Policy",
                                                     CONTENT_SECURITY_POLICY)
            await send(message)

        await self.app(scope, receive, with_policy)


def example_paths(registry: Mapping[str, AgentSpec]) -> dict[str, str]:
    """Path -> the name of its example in :data:`~app.api.examples.EXAMPLES`, for every
    operation of ``registry`` that has one (the JSON route and the stream alike) and the
    other routes that take JSON."""
    paths = dict(ROUTE_EXAMPLES)
    for spec in registry.values():
        if spec.operation not in EXAMPLES:
            continue
        if spec.json_route:
            paths[API_PREFIX + spec.route] = spec.operation
        if spec.streams:
            paths[API_PREFIX + spec.stream_route] = spec.operation
    return paths


def add_examples(schema: dict[str, Any], registry: Mapping[str, AgentSpec]) -> None:
    """Put each example in ``components.examples`` once and refer to it from the request body
    of the routes it is for."""
    components = schema.setdefault("components", {}).setdefault("examples", {})
    for path, name in example_paths(registry).items():
        operation = schema["paths"].get(path, {}).get("post")
        if operation is None:
            continue
        summary, body = EXAMPLES[name]
        components[name] = {"summary": summary, "value": body}
        content = operation["requestBody"]["content"]["application/json"]
        content["examples"] = {name: {"$ref": f"#/components/examples/{name}"}}


def add_security(schema: dict[str, Any]) -> None:
    """Declare the API key schemes and require one on every operation but the probes'."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, item in schema["paths"].items():
        if path in OPEN_PATHS:
            continue
        for method, operation in item.items():
            if method in _METHODS:
                operation["security"] = SECURITY
    schema["info"]["description"] += (
        "\n\nAPI keys are on: every route but /health and /ready needs one, as "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>` (in /docs: Authorize).")


def install(app: FastAPI, registry: Mapping[str, AgentSpec], api_keys: bool) -> None:
    """Have ``app``'s OpenAPI schema carry the examples and, with ``api_keys``, the
    security schemes (built once, on first use, as FastAPI's own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # the dict app.openapi_schema now holds, completed here
        add_examples(schema, registry)
        if api_keys:
            add_security(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
