"""API keys, tenants, CORS, request ids, and the one error shape on every refusal."""

import hmac
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.middleware import ApiKeys
from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.conftest import seed_example

BACKEND = Path(__file__).resolve().parents[2]

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


#: Keys of the refused API_KEYS values below (16+ characters, or short ones that are no text
#: of the messages): none may appear anywhere in what a refusal prints.
KEY_1 = "zq8vk3px9mw2rt7yb4nl"
KEY_2 = "h5gw1ce0ua6jdo3sqf2x"
SHORT = "k7Qx"

#: (API_KEYS, its keys, what the refusal must say)
BAD_API_KEYS = {
    "short key (the issue's)": (f"alice:{SHORT},bob:{KEY_1}", [SHORT, KEY_1],
                                ["API_KEYS entry 1 (alice)", "16"]),
    "pair reversed": (f"{KEY_1}:alice", [KEY_1], ["API_KEYS entry 1", "tenant:key"]),
    "tenant is another's key": (f"alice:{KEY_1},{KEY_1}:{KEY_2}", [KEY_1, KEY_2],
                                ["API_KEYS entry 2", "alice"]),
    "key used twice": (f"alice:{KEY_1},bob:{KEY_1}", [KEY_1],
                       ["API_KEYS entry 2 (bob)", "entry 1 (alice)"]),
    "tenant twice": (f"alice:{KEY_1},alice:{KEY_2}", [KEY_1, KEY_2],
                     ["API_KEYS entry 2 (alice)", "twice"]),
    "no colon": (f"alice {KEY_1}", [KEY_1], ["API_KEYS entry 1", "tenant:key"]),
    "reserved tenant": (f"local:{KEY_1}", [KEY_1], ["API_KEYS entry 1 (local)", "reserved"]),
    "reserved tenant, other case": (f"bob:{KEY_2},LOCAL:{KEY_1}", [KEY_1, KEY_2],
                                    ["API_KEYS entry 2 (LOCAL)", "reserved"]),
}


def assert_no_key_text(output: str, keys: list[str]) -> None:
    """No key, nor any 8 characters of one, anywhere in ``output``, however it was wrapped
    (whitespace and the box lines of a rich traceback taken out)."""
    flat = re.sub(r"[\s\u2500-\u257f]", "", output)
    for key in keys:
        windows = [key] if len(key) < 8 else [key[i:i + 8] for i in range(len(key) - 7)]
        leaked = [window for window in windows if window in output or window in flat]
        assert not leaked, f"key text {leaked} in:\n{output}"


@pytest.mark.parametrize("case", list(BAD_API_KEYS))
def test_a_bad_api_keys_value_names_the_problem_and_never_a_key(settings, monkeypatch, case):
    value, keys, said = BAD_API_KEYS[case]
    monkeypatch.setenv("API_KEYS", value)
    refusals = []
    for build in (Settings, lambda: settings.replace(api_keys=value),
                  lambda: Settings(api_keys=SecretStr(value))):
        with pytest.raises(ValueError) as refused:
            build()
        refusals.append(str(refused.value))
    for message in refusals:
        assert_no_key_text(message, keys)
        for fragment in said:
            assert fragment in message, message
        # said once, plainly: not "API_KEYS: Value error, API_KEYS entry ..."
        assert message.count("Value error") <= 1 and message.count("API_KEYS") == 1, message


@pytest.mark.parametrize("case", ["short key (the issue's)", "pair reversed", "key used twice"])
def test_a_real_start_with_bad_api_keys_prints_no_key(tmp_path, case):
    """The whole output of ``writer-assistant serve`` (the worktree's code, from an empty
    directory: no .env) refused at startup, traceback included."""
    value, keys, said = BAD_API_KEYS[case]
    env = {**os.environ, "API_KEYS": value, "PYTHONPATH": str(BACKEND), "COLUMNS": "80"}
    started = subprocess.run(
        [sys.executable, "-c", "from app.cli import app; app()", "serve", "--port", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert_no_key_text(output, keys)
    unwrapped = re.sub(r"[\s\u2500-\u257f]+", " ", output)
    for fragment in said:
        assert fragment in unwrapped, output


@pytest.mark.parametrize("name", ["local", "Local", "LOCAL"])
def test_the_local_tenant_name_is_reserved(settings, name):
    """``local`` is every request's tenant when keys are off (the default archive collection,
    per-address limits): no key may be that tenant."""
    with pytest.raises(ValueError, match=r"API_KEYS entry 1 \(\w+\): the tenant name .* reserved"):
        settings.replace(api_keys=f"{name}:{KEY_1}")


async def _no_app(scope, receive, send):
    raise AssertionError("not called")


@pytest.mark.parametrize("presented", [b"", b"x", ALICE_KEY.encode(), ALICE_KEY[:-1].encode(),
                                       b"y" * 300])
def test_key_comparison_takes_the_same_steps_whatever_the_presented_length(monkeypatch,
                                                                          presented):
    """Every configured key is compared, always between two values of one fixed length, so
    neither which key nearly matched nor any key's length shows in the timing."""
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ApiKeys(_no_app, {"alice": ALICE_KEY, "bob": BOB_KEY, "carol": "c" * 64})
    tenant = keys.tenant_for(presented)
    assert tenant == ("alice" if presented == ALICE_KEY.encode() else None)
    assert len(compared) == 3 and len(set(compared)) == 1, compared
    assert compared[0][0] == compared[0][1]


def test_requests_without_a_valid_key_are_limited_per_address(settings):
    """Key guessing: past RATE_LIMIT_AUTH_FAILURES_PER_MINUTE refusals an address gets 429
    (even for a right key, else the limit would still tell a guess that hit); other addresses
    and the probes are unaffected."""
    app = create_app(settings.replace(api_keys=SecretStr(f"alice:{ALICE_KEY},bob:{BOB_KEY}"),
                                      rate_limit_auth_failures_per_minute=3),
                     generator=FakeGenerator())
    guess = {"Authorization": "Bearer guess-guess-guess-guess"}
    with TestClient(app, client=("10.0.0.1", 5000)) as guesser, \
            TestClient(app, client=("10.0.0.2", 5000)) as other:
        codes = [guesser.post("/api/v1/tokens/count", json={"text": "x"}, headers=guess)
                 .status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        refused = guesser.post("/api/v1/tokens/count", json={"text": "x"},
                               headers={"X-API-Key": ALICE_KEY})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "RATE_LIMIT_AUTH_FAILURES_PER_MINUTE" in refused.json()["error"]["message"]
        assert guesser.get("/health").status_code == 200
        assert other.post("/api/v1/tokens/count", json={"text": "x"},
                          headers={"X-API-Key": BOB_KEY}).status_code == 200
        assert other.post("/api/v1/tokens/count", json={"text": "x"},
                          headers=guess).status_code == 401


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
