"""A new agent is one declaration: a toy agent, declared here and nowhere else, gets its JSON
route, its stream, ``/context/preview``, the OpenAPI docs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from app import bootstrap, cli
from app.agents import registry
from app.agents.registry import REGISTRY, build_registry
from app.agents.spec import AgentSpec, TaskInput, json_answer
from app.llm.fake import FakeGenerator
from app.main import create_app
from app.schemas.requests import AgentRequest
from app.schemas.responses import GenerationInfo
from tests.conftest import seed_example


class HaikuRequest(AgentRequest):
    """Write a haiku about a theme of the story."""

    theme: str = Field(min_length=1, max_length=100, description="What the haiku is about.")


class Haiku(BaseModel):
    lines: list[str] = Field(min_length=3, max_length=3)


class HaikuResponse(GenerationInfo):
    theme: str
    lines: list[str]


def haiku_task(request: HaikuRequest) -> TaskInput:
    return TaskInput(f"Write a haiku about {request.theme}, as JSON with three lines.",
                     summary={"theme": request.theme})


TOY = AgentSpec("write-haiku", "poet", "You are the poet.", haiku_task, HaikuRequest,
                HaikuResponse, json_answer(), summary="Poet agent: write a haiku",
                output_model=Haiku, max_tokens=120, temperature=0.5, streams=True)
REPLY = json.dumps({"lines": ["Dark pines lean and wait", "Aria listens, breath held",
                              "the forest answers"]})


@pytest.fixture
def toy_client(settings) -> TestClient:
    agents = build_registry(list(REGISTRY.values()), [TOY])
    fake = FakeGenerator(replies=[REPLY])
    with TestClient(create_app(settings, generator=fake, agents=agents)) as client:
        client.fake = fake  # type: ignore[attr-defined]
        yield client


def body() -> dict:
    return {**seed_example(), "theme": "the dark wood"}


def test_the_toy_agent_gets_its_json_route(toy_client):
    response = toy_client.post("/api/v1/write-haiku", json=body())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["theme"] == "the dark wood" and answer["lines"][1].startswith("Aria")
    assert answer["context_metadata"]["agent"] == "poet" and answer["attempts"] == 1
    messages, params = toy_client.fake.calls[-1]
    assert messages[-1].content.startswith("You are the poet.")
    assert params.temperature == 0.5 and params.max_tokens == 120
    assert params.json_schema == Haiku.model_json_schema()
    # its request model is enforced like any other
    bad = toy_client.post("/api/v1/write-haiku", json={**body(), "theme": ""})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "theme"


def test_the_toy_agent_streams(toy_client):
    with toy_client.stream("POST", "/api/v1/write-haiku/stream", json=body()) as response:
        assert response.status_code == 200
        text = response.read().decode()
    events = [line.removeprefix("event: ").strip() for line in text.splitlines()
              if line.startswith("event: ")]
    assert events[0] == "meta" and events[-1] == "done" and "token" in events
    assert events.count("done") == 1 and "error" not in events


def test_the_toy_agent_is_previewed_and_warmed(toy_client):
    preview = toy_client.post("/api/v1/context/preview",
                              json={"operation": "write-haiku", "request": body()})
    assert preview.status_code == 200, preview.text
    assert preview.json()["messages"][-1]["content"].startswith("You are the poet.")
    unknown = toy_client.post("/api/v1/context/preview",
                              json={"operation": "write-sonnet", "request": body()})
    assert unknown.status_code == 422


def test_the_toy_agent_is_in_the_docs(toy_client):
    schema = toy_client.get("/openapi.json").json()
    route = schema["paths"]["/api/v1/write-haiku"]["post"]
    assert route["summary"] == "Poet agent: write a haiku"
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "HaikuRequest")
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "HaikuResponse")
    assert {"422", "503"} <= set(route["responses"])
    assert "/api/v1/write-haiku/stream" in schema["paths"]
    preview = schema["components"]["schemas"]
    operations = next(s for name, s in preview.items() if name == "Operation")["enum"]
    assert "write-haiku" in operations and "editor-review" in operations


def test_the_toy_agent_runs_from_the_cli(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, TOY.operation, TOY)
    fake = FakeGenerator(replies=[REPLY])
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: fake)
    path = tmp_path / "haiku.json"
    path.write_text(json.dumps({"operation": "write-haiku", "request": body()}))
    env = {"ARCHIVE_ENABLED": "false", "SUMMARY_CACHE_DIR": str(tmp_path / "summaries")}
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["generate", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "Aria listens" in result.stdout and "finish_reason stop" in result.stderr


def test_two_agents_may_not_share_a_name():
    with pytest.raises(ValueError, match="write-haiku"):
        build_registry([TOY], [TOY])
