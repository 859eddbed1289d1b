"""The API docs: the OpenAPI schema's security schemes and examples, the pages open without a
key (unless DOCS_REQUIRE_KEY) and load nothing from elsewhere. (A real browser drives them in
tests/browser/test_docs_browser.py.)"""

import copy
import json
import re
import time

import jsonschema
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse
from pydantic import SecretStr

from app.agents.registry import REGISTRY
from app.api.docs import API_KEY_HEADER, BEARER, ROUTE_EXAMPLES, example_paths
from app.api.examples import ALICE_CONTEXT, EXAMPLES, PLOT_POINT, example
from app.api.middleware import DOCS_PATHS, OPEN_PATHS
from app.api.v1.tokens import TokenCountRequest, TokenValidateRequest
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.schemas.archive import SearchRequest
from app.schemas.evaluations import EvaluationRequest
from app.schemas.generations import ReplayRequest
from app.schemas.pipeline import ChapterPipelineRequest
from app.schemas.voice import FeedbackRequest, VoiceCompareRequest
from tests.api.replies import reply

KEY = "docs-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: The request models of the routes that are not agent operations.
OTHER_MODELS = {"tokens-count": TokenCountRequest, "tokens-validate": TokenValidateRequest,
                "archive-search": SearchRequest, "chapter-pipeline": ChapterPipelineRequest,
                "voice-compare": VoiceCompareRequest, "feedback": FeedbackRequest,
                "generation-replay": ReplayRequest, "evaluation": EvaluationRequest}


@pytest.fixture
def keyed(settings):
    app = create_app(settings.replace(api_keys=SecretStr(f"me:{KEY}")), generator=FakeGenerator())
    with TestClient(app) as client:
        yield client


def test_the_examples_are_the_alice_example(alice_request):
    """The packaged story is examples/alice_context.py's, chapter 1 cut to its opening."""
    built = alice_request["structured_context"]
    ours = copy.deepcopy(ALICE_CONTEXT)
    chapter, = ours.pop("chapters")
    first = built.pop("chapters")[0]
    assert ours == built
    assert (chapter["number"], chapter["title"]) == (first["number"], first["title"])
    paragraphs = chapter["content"].split("\n\n")
    assert paragraphs == first["content"].split("\n\n")[:len(paragraphs)]
    assert alice_request["plot_point"] == PLOT_POINT


def test_every_operation_that_takes_json_has_an_example(client):
    schema = client.get("/openapi.json").json()
    examples = schema["components"]["examples"]
    assert set(REGISTRY) <= set(EXAMPLES)
    taking_json = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            taking_json.append(path)
            refs = content["application/json"].get("examples")
            assert refs, f"{method.upper()} {path} has no example"
            for ref in refs.values():
                name = ref["$ref"].removeprefix("#/components/examples/")
                assert examples[name]["value"] == EXAMPLES[name][1]
    assert sorted(taking_json) == sorted(example_paths(REGISTRY))
    assert set(ROUTE_EXAMPLES.values()) | set(REGISTRY) == set(EXAMPLES)


def _validate(name: str, body: dict) -> None:
    """Validate example ``name`` against the request model of its route."""
    if name in REGISTRY:
        REGISTRY[name].request_model.model_validate(body)
    elif name in OTHER_MODELS:
        OTHER_MODELS[name].model_validate(body)
    else:  # /context/preview and /context/warm: an operation and its body
        assert set(body) == {"operation", "request"}
        REGISTRY[body["operation"]].request_model.model_validate(body["request"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_validates_against_its_request_model_and_schema(name, client):
    _validate(name, example(name))
    schema = client.get("/openapi.json").json()
    for path, example_name in example_paths(REGISTRY).items():
        if example_name == name:
            body_schema = schema["paths"][path]["post"]["requestBody"]["content"][
                "application/json"]["schema"]
            jsonschema.validate(example(name), {**body_schema,
                                                "components": schema["components"]})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on the scripted model with API keys on and a real (temporary) archive holding
    the examples' chapter, for the archive's examples."""
    from app.config import Settings

    state = tmp_path_factory.mktemp("docs")
    settings = Settings(summary_cache_dir=state / "summaries", archive_db_path=state / "archive",
                        feedback_db_path=state / "feedback.sqlite3", rate_limit_per_minute=0,
                        rate_limit_concurrent=0, finetune_dir=state / "finetune",
                        adapters_dir=state / "adapters", api_keys=SecretStr(f"me:{KEY}"))
    with TestClient(create_app(settings, generator=FakeGenerator(replies=[reply]))) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        chapter = ALICE_CONTEXT["chapters"][0]
        text = f"CHAPTER I. {chapter['title']}\n\n{chapter['content']}\n"
        uploaded = client.post("/api/v1/archive/files", headers=AUTH,
                               files={"file": ("carroll-alice.txt", text.encode())})
        assert uploaded.status_code == 201, uploaded.text
        yield client


@pytest.mark.parametrize(("path", "name"), sorted(example_paths(REGISTRY).items()))
def test_posting_every_example_answers_200(path, name, served):
    if path.endswith(("/stream", "/rag/chat")):
        with connect_sse(served, "POST", path, json=example(name), headers=AUTH) as source:
            assert source.response.status_code == 200, source.response.read()
            events = [event.event for event in source.iter_sse()]
        assert events[-1] == "done", events
        return
    if "{generation_id}" in path:  # the replay of a record made with the example's request
        made = served.post("/api/v1/generate-chapter", json=example(name)["request"],
                           headers=AUTH)
        path = path.replace("{generation_id}", made.json()["generation_id"])
    response = served.post(path, json=example(name), headers=AUTH)
    if path.endswith("/evaluations"):
        # valid, but this app has no adapter: training one is tests/finetune's (real model)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "adapter_not_found"
        return
    assert response.status_code == (201 if path.endswith("/feedback") else 200), response.text
    if "/replay" in path:
        assert response.json()["identical"] is True


def test_the_key_is_a_security_scheme_every_keyed_operation_requires(keyed):
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes[BEARER] == {"type": "http", "scheme": "bearer",
                               "description": schemes[BEARER]["description"]}
    assert schemes[API_KEY_HEADER]["type"] == "apiKey"
    assert (schemes[API_KEY_HEADER]["in"], schemes[API_KEY_HEADER]["name"]) == (
        "header", "X-API-Key")
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if path in OPEN_PATHS:
                assert "security" not in operation, path
            else:
                assert operation["security"] == [{BEARER: []}, {API_KEY_HEADER: []}], (
                    method, path)
    # each scheme is one the middleware takes
    count = {"text": "Alice"}
    assert keyed.post("/api/v1/tokens/count", json=count, headers=AUTH).status_code == 200
    assert keyed.post("/api/v1/tokens/count", json=count,
                      headers={"X-API-Key": KEY}).status_code == 200


def test_without_keys_the_schema_declares_none(client):
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema["components"]
    assert not any("security" in op for item in schema["paths"].values()
                   for op in item.values())


def test_the_docs_open_without_a_key_and_hold_no_secret(keyed):
    for path in sorted(DOCS_PATHS):
        response = keyed.get(path)
        assert response.status_code == 200, path
        assert KEY not in response.text
    assert keyed.get("/api/v1/tokens/count").status_code == 401
    assert keyed.get("/metrics").status_code == 401


def test_docs_require_key_closes_them(settings):
    keyed = settings.replace(api_keys=SecretStr(f"me:{KEY}"), docs_require_key=True)
    with TestClient(create_app(keyed, generator=FakeGenerator())) as client:
        for path in [*sorted(DOCS_PATHS), "/docs/assets/swagger-ui.css"]:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=AUTH).status_code == 200, path


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_pages_load_their_assets_from_the_app(page, keyed):
    html = keyed.get(page).text
    assert "cdn" not in html and "googleapis" not in html
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    for url in urls:
        response = keyed.get(url)
        assert response.status_code == 200 and response.content, url
    assert "url: '/openapi.json'" in html or "spec-url=\"/openapi.json\"" in html


def test_the_docs_do_not_count_against_a_user_s_limits(settings):
    limited = settings.replace(rate_limit_per_minute=2)
    with TestClient(create_app(limited, generator=FakeGenerator())) as client:
        for _ in range(3):
            for path in ["/docs", "/openapi.json", "/docs/assets/swagger-ui.css"]:
                assert client.get(path).status_code == 200
        assert client.post("/api/v1/tokens/count", json={"text": "a"}).status_code == 200


def test_the_schema_stays_small(client):
    # 218 KB with the pipeline, voice and feedback routes (issue 13); 283 KB with the
    # generation records, models and evaluations routes and their request fields (issues 14,
    # 15), most of it the error responses every route documents; the docs pages load it
    assert len(json.dumps(client.get("/openapi.json").json())) < 300_000
