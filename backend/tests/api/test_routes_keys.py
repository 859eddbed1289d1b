"""Which routes need an API key: a walk over every route of the real app (the app factory's),
each method asked without a key. Every route needs one but an explicit allow-list, so a route
someone opens (a new entry in ``OPEN_PATHS``, a path under the docs' prefixes, a route
mounted outside the key check) fails here until it is added below on purpose."""

import re

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount, Route

try:  # FastAPI 0.16x includes routers lazily: app.routes holds the included routers
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI: app.routes holds every route, prefixed
    def iter_route_contexts(routes):
        return routes

from app.llm.fake import FakeGenerator
from app.main import create_app

KEY = "alice-key-0123456789"

#: The probes: open with keys on, whatever DOCS_REQUIRE_KEY says.
PROBES = {"/health", "/ready", "/api/v1/health", "/api/v1/ready"}
#: The API docs: open unless DOCS_REQUIRE_KEY (they hold no secrets; /docs has an Authorize
#: button). The assets' mount is walked as "/docs/assets/{path}".
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs/assets/{path}"}


def _walk(app):
    """(path template, method) of every route of ``app``, documented or not, mounts included."""
    found = set()
    for context in iter_route_contexts(app.routes):
        route = getattr(context, "original_route", context)
        path = getattr(context, "path_format", None) or route.path_format
        if isinstance(route, Mount):  # FastAPI 0.16x gives "/docs/assets/{path}" already
            found.add((path if path.endswith("{path}") else path.rstrip("/") + "/{path}",
                       "GET"))
        elif isinstance(route, Route) or hasattr(route, "methods"):
            found |= {(path, method) for method in route.methods or {"GET"}}
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return found


def _concrete(path):
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.mark.parametrize("docs_need_key", [False, True])
def test_every_route_needs_a_key_but_the_allow_list(settings, docs_need_key):
    app = create_app(settings.replace(api_keys=SecretStr(f"alice:{KEY}"),
                                      docs_require_key=docs_need_key),
                     generator=FakeGenerator())
    routes = _walk(app)
    paths = {path for path, _ in routes}
    assert len(routes) > 25 and "/api/v1/generate-chapter" in paths  # the walk saw the app
    allowed = PROBES | (set() if docs_need_key else DOCS)
    assert allowed <= paths, f"allow-listed paths with no route: {allowed - paths}"
    open_routes, keyed = set(), set()
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, method in sorted(routes):
            response = client.request(method, _concrete(path), json={})
            if response.status_code == 401:
                assert method == "HEAD" or response.json()["error"]["code"] == "unauthenticated"
                keyed.add(path)
            else:
                open_routes.add(path)
            if method != "HEAD":  # a key opens it: the 401 was the key check's, not the route's
                with_key = client.request(method, _concrete(path), json={},
                                          headers={"X-API-Key": KEY})
                assert with_key.status_code != 401, (method, path)
    assert open_routes == allowed, (f"open without a key but not allowed: "
                                    f"{open_routes - allowed}; allowed but keyed: "
                                    f"{allowed - open_routes}")
    assert keyed == paths - allowed


def test_without_keys_every_route_is_open(settings):
    """Keys off (local use): nothing answers 401."""
    app = create_app(settings, generator=FakeGenerator())
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, method in sorted(_walk(app)):
            assert client.request(method, _concrete(path), json={}).status_code != 401, path
