"""The one error table: every domain error has a status, every answer the one envelope, and
the routes' OpenAPI documentation agrees with what the table and the middleware answer."""

import inspect
import json
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

try:  # FastAPI 0.16x includes routers lazily: app.routes holds the included routers
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI: app.routes holds every route, prefixed
    def iter_route_contexts(routes):
        return routes
from fastapi.testclient import TestClient
from pydantic import SecretStr

import app.errors
from app.agents.registry import REGISTRY
from app.api.errors import (
    ARCHIVE_ERRORS,
    RETRY_AFTER_MAX_SECONDS,
    STATUS,
    error_body,
    error_response,
    status_of,
)
from app.api.middleware import OPEN_PATHS
from app.errors import (
    ModelOverloaded,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Unauthenticated,
    WriterAssistantError,
)
from app.llm.fake import FakeGenerator
from app.llm.remote import unreachable, upstream_error
from app.main import create_app

#: Every domain error: the WriterAssistantError subclasses of app.errors.
ERRORS = sorted(
    (c for c in vars(app.errors).values() if isinstance(c, type)
     and issubclass(c, WriterAssistantError) and c is not WriterAssistantError),
    key=lambda c: c.__name__,
)
BY_CODE = {c.code: c for c in ERRORS}
ENVELOPE_KEYS = {"code", "type", "message", "param", "details"}
APP_DIR = Path(app.errors.__file__).parent


def test_error_codes_are_unique():
    assert len(BY_CODE) == len(ERRORS)


@pytest.mark.parametrize("error", ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_has_a_status_and_answers_in_the_envelope(error):
    assert status_of(error) != 500
    raised = error("Something to change.", param="field", retry_after=2.5, retryable=True,
                   figure=1)
    response = error_response(raised)
    assert response.status_code == status_of(error)
    body = json.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS
    assert body["error"] == {"code": error.code, "type": expected_type(response.status_code),
                             "message": "Something to change.", "param": "field",
                             "details": {"figure": 1}}
    assert error_body(raised) == body  # the same envelope as a stream's error event
    for internal in ("retryable", "retry_after"):
        assert internal not in response.body.decode()
    if response.status_code in (429, 503):
        assert response.headers["retry-after"] == "3"
    else:
        assert "retry-after" not in response.headers


def expected_type(status: int) -> str:
    """The OpenAI-style ``type`` of an error answer, by its status (README "Errors")."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def test_error_types_are_the_ones_clients_of_openai_style_apis_know():
    types = {status_of(error): json.loads(error_response(error("x")).body)["error"]["type"]
             for error in ERRORS}
    assert types[400] == types[404] == types[422] == "invalid_request_error"
    assert types[401] == "authentication_error"
    assert types[429] == "rate_limit_error"
    assert types[502] == types[503] == types[504] == "server_error"


@pytest.mark.parametrize("error", [QueueFull, QueueTimeout, RateLimited, ModelOverloaded,
                                   ModelUnavailable], ids=lambda c: c.__name__)
def test_retry_after_is_capped(error):
    """A day's Retry-After (a model server's, or a long queue's estimate) is capped."""
    response = error_response(error("Wait.", retry_after=86_400))
    assert response.headers["retry-after"] == str(RETRY_AFTER_MAX_SECONDS)
    assert 0 < RETRY_AFTER_MAX_SECONDS <= 300
    assert error_response(error("Wait.", retry_after=0.2)).headers["retry-after"] == "1"


def test_an_unlisted_subclass_answers_with_its_nearest_listed_ancestor():
    class Busier(QueueFull):
        code = "busier"

    class Anonymous(Unauthenticated):
        code = "anonymous"

    assert Busier not in STATUS and Anonymous not in STATUS
    busy = error_response(Busier("Wait."))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    anonymous = error_response(Anonymous("Log in."))
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert status_of(WriterAssistantError("bare")) == 500


def test_retryable_is_an_attribute_never_a_detail():
    down = unreachable("http://127.0.0.1:1/v1", ConnectionRefusedError())
    loading = upstream_error(503, {"retry-after": "7"}, "loading")
    assert down.retryable and loading.retryable
    assert not upstream_error(500, {}, "boom").retryable
    for error in (down, loading):
        assert "retryable" not in error.details
        assert "retryable" not in json.dumps(error_body(error))


def test_ready_answers_not_ready_through_the_table_without_counting_a_refusal(settings):
    client = TestClient(create_app(settings))  # no lifespan: the model stays "loading"
    response = client.get("/ready")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "not_ready"
    assert set(response.json()["error"]) == ENVELOPE_KEYS
    assert "not_ready" not in client.get("/metrics").text


# --- the routes' documentation -----------------------------------------------------------------

def _constructed_errors(*globs: str) -> set[type[WriterAssistantError]]:
    """The domain errors constructed (``Name(``) in the app's modules matching ``globs``."""
    names = set()
    for glob in globs:
        for path in APP_DIR.glob(glob):
            names |= set(re.findall(r"\b([A-Z]\w+)\(", path.read_text()))
    return {c for c in ERRORS if c.__name__ in names}


#: What an agent operation runs through: the runner, the registry, assembly, the scheduler,
#: the generators and the services.
AGENT_PATH_ERRORS = _constructed_errors("agents/*.py", "context/*.py", "llm/*.py", "state.py")


@pytest.fixture
def app_(settings):
    return create_app(settings, generator=FakeGenerator())


def _routes(app_):
    """(path, method, route) of every documented operation of the app."""
    found = []
    for context in iter_route_contexts(app_.routes):
        route = getattr(context, "original_route", context)
        if isinstance(route, APIRoute) and route.include_in_schema:
            found += [(context.path_format, method, route) for method in sorted(route.methods)]
    operations = [(p, m) for p, ops in app_.openapi()["paths"].items() for m in ops]
    assert len(found) == len(operations) > 20  # the walk saw every route
    return found


def _documented(app_, path, method):
    """status -> the codes its documentation lists, for the error responses of an operation."""
    responses = app_.openapi()["paths"][path][method.lower()]["responses"]
    codes = {}
    for status, response in responses.items():
        if int(status) < 400:
            continue
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
        codes[int(status)] = set(re.findall(r"`(\w+)`", response["description"]))
    return codes


def _is_agent_route(path):
    operations = {f"/api/v1{spec.route}" for spec in REGISTRY.values()} | {
        f"/api/v1{spec.stream_route}" for spec in REGISTRY.values()} | {
        "/api/v1/context/preview", "/api/v1/context/warm"}
    return path.removesuffix("/stream") in operations


def _retrieves(path):
    """Whether the route's operation retrieves from the archive (an archivist's, or preview
    and warm, which take any operation)."""
    archivists = {f"/api/v1{route}" for spec in REGISTRY.values() if spec.retrieval_query
                  for route in (spec.route, spec.stream_route)}
    return path in archivists or path.startswith("/api/v1/context/")


def test_every_route_documents_the_errors_it_can_answer_from_the_table(app_):
    assert AGENT_PATH_ERRORS  # the scan found the errors
    for path, method, route in _routes(app_):
        source = inspect.getsource(route.endpoint)
        documented = _documented(app_, path, method)
        where = f"{method} {path}"

        def has(status, code, where=where, documented=documented):
            assert code in documented.get(status, set()), f"{where}: {status} {code}"

        # documented statuses and codes are the table's
        for status, codes in documented.items():
            for code in codes:
                assert code in BY_CODE and status_of(BY_CODE[code]) == status, (where, code)
        if path not in OPEN_PATHS:  # the middleware's refusals
            has(401, "unauthenticated")
            has(413, "request_too_large")
            has(429, "rate_limited")
        if route.body_field is not None:
            has(400, "invalid_json")
            has(422, "invalid_request")
        if route.dependant.path_params or route.dependant.query_params:
            has(422, "invalid_request")
        if "require_runner" in source:
            has(503, "model_unavailable")
            has(502, "generation_failed")
            has(429, "model_overloaded")
        if "require_archive" in source:
            has(503, "archive_unavailable")
        if _is_agent_route(path):
            assert {422, 503} <= set(documented), where
            for error in AGENT_PATH_ERRORS:
                if error not in ARCHIVE_ERRORS or _retrieves(path):
                    has(status_of(error), error.code)
        if path.endswith("/ready"):
            has(503, "not_ready")


def test_the_documented_refusals_are_the_ones_the_middleware_answers(settings):
    """Keys on, a small body limit and one request a minute: every route but the probes
    answers 401, 413 and 429 as documented; the probes answer none of them."""
    keyed = settings.replace(api_keys=SecretStr("alice:alice-key-0123456789"))
    limited = settings.replace(max_request_bytes=1024, rate_limit_per_minute=1)
    apps = {401: create_app(keyed, generator=FakeGenerator()),
            429: create_app(limited, generator=FakeGenerator())}
    with TestClient(apps[401]) as keys, TestClient(apps[429]) as limits:
        limits.get("/metrics")  # the minute's one request
        for path, method, _route in _routes(apps[401]):
            documented = _documented(apps[401], path, method)
            url = path.replace("{file}", "story.txt")
            answers = {
                401: keys.request(method, url).status_code,
                429: limits.request(method, url).status_code,
                413: limits.request(method, url, content=b"x" * 2048).status_code,
            }
            for status, answer in answers.items():
                if path in OPEN_PATHS:
                    assert status not in documented and answer not in (401, 429), (path, answer)
                else:
                    assert answer == status, (method, path, status, answer)
                    assert status in documented, (method, path, status)
