"""API keys, tenants, CORS, request ids, and the one error shape on every refusal."""

import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example

ALICE_KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-abcdefghijkl"


@pytest.fixture
def keyed(settings):
    app = create_app(settings.replace(api_keys=SecretStr(f"alice:{ALICE_KEY},bob:{BOB_KEY}")),
                     generator=FakeGenerator())
    with TestClient(app) as client:
        yield client


def test_every_route_but_the_probes_and_the_docs_needs_a_key(keyed):
    for method, path in [("post", "/api/v1/generate-chapter"), ("get", "/metrics"),
                         ("post", "/api/v1/tokens/count"), ("get", "/api/v1/nothing-here"),
                         ("get", "/docs-not"), ("get", "/docs/assets-not/x.js")]:
        response = keyed.request(method.upper(), path, json=seed_example())
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthenticated"
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    # the docs hold no secrets (DOCS_REQUIRE_KEY closes them: tests/api/test_docs.py)
    assert keyed.get("/docs").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200


def test_a_known_key_passes_by_either_header_and_a_wrong_one_does_not(keyed):
    ok = keyed.post("/api/v1/tokens/count", json={"text": "hi"},
                    headers={"Authorization": f"Bearer {ALICE_KEY}"})
    assert ok.status_code == 200
    ok = keyed.post("/api/v1/tokens/count", json={"text": "hi"}, headers={"X-API-Key": BOB_KEY})
    assert ok.status_code == 200
    wrong = keyed.post("/api/v1/tokens/count", json={"text": "hi"},
                       headers={"Authorization": f"Bearer {ALICE_KEY[:-1]}x"})
    assert wrong.status_code == 401


def test_keys_never_reach_logs_or_responses(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    response = keyed.post("/api/v1/generate-chapter", json=seed_example(),
                          headers={"Authorization": f"Bearer {ALICE_KEY}"})
    assert response.status_code == 200
    keyed.post("/api/v1/generate-chapter", json=seed_example(),
               headers={"Authorization": "Bearer not-a-valid-key-at-all"})
    assert ALICE_KEY not in caplog.text and "not-a-valid-key-at-all" not in caplog.text
    assert ALICE_KEY not in response.text


def test_bad_api_keys_setting_is_refused_without_quoting_the_key(settings):
    with pytest.raises(ValueError) as refused:
        settings.replace(api_keys="alice:short")
    assert "short" not in str(refused.value).split("input_value")[0]


def test_every_response_carries_a_request_id(client, keyed):
    responses = [
        client.get("/health"),
        client.post("/api/v1/generate-chapter", json=seed_example()),
        client.post("/api/v1/generate-chapter", json={"structured_context": 5}),
        client.get("/api/v1/missing"),
        keyed.post("/api/v1/generate-chapter", json=seed_example()),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    echoed = client.get("/health", headers={"X-Request-Id": "0123456789abcdef0123456789abcdef"})
    assert echoed.headers["x-request-id"] == "0123456789abcdef0123456789abcdef"


class Exploding(FakeGenerator):
    async def generate(self, messages, params):
        raise RuntimeError("secret detail /etc/passwd sk-123")

    async def stream(self, messages, params):
        raise RuntimeError("secret detail /etc/passwd sk-123")
        yield


def test_unexpected_errors_are_500_envelopes_without_internals(settings):
    app = create_app(settings, generator=Exploding())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/api/v1/generate-chapter", json=seed_example())
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text and "passwd" not in response.text
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(("origins", "origin", "allowed", "credentials"), [
    ("http://localhost:5173", "http://localhost:5173", "http://localhost:5173", "true"),
    ("http://localhost:5173", "http://evil.example", None, "any"),
    ("*", "http://anywhere.example", "*", None),
])
def test_cors_follows_the_allowlist_and_never_pairs_star_with_credentials(
        settings, origins, origin, allowed, credentials):
    app = create_app(settings.replace(cors_origins=origins.split(",")),
                     generator=FakeGenerator())
    with TestClient(app) as client:
        preflight = client.options("/api/v1/generate-chapter", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        simple = client.get("/health", headers={"Origin": origin})
    assert simple.headers.get("access-control-allow-origin") == allowed
    if credentials != "any":  # without an allowed origin the browser ignores it anyway
        assert simple.headers.get("access-control-allow-credentials") == credentials
    if allowed:
        assert preflight.status_code == 200


def test_no_cors_headers_without_an_allowlist(client):
    response = client.get("/health", headers={"Origin": "http://localhost:5173"})
    assert "access-control-allow-origin" not in response.headers
